"""Routing processes load neither scikit-learn nor scipy.stats/optimize: LightGBM is imported without its
scikit-learn layer (router/lean_lightgbm.py) and training's estimators are imported where they are fitted.
Start-up and memory of each service worker and each `tierwise route` (issue 12; numbers in the README)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.unit.test_cli import _fresh_settings, artifact_dir  # noqa: F401 - the fixtures

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("sklearn", "scipy.stats", "scipy.optimize")


def _run(code: str) -> dict:
    """Run `code` in a fresh interpreter at the repository's root; it prints one JSON line last."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def _heavy_loaded() -> str:
    return f"sorted(m for m in sys.modules if any(m == h or m.startswith(h + '.') for h in {HEAVY!r}))"


def test_the_service_loads_no_training_libraries():
    seen = _run(f"""
        import json, sys
        import serving.app
        print(json.dumps({{"heavy": {_heavy_loaded()}}}))
    """)
    assert seen["heavy"] == []


def test_routing_a_batch_with_the_tierwise_command_loads_no_training_libraries(tmp_path, artifact_dir):  # noqa: F811
    """Its own process (the service's would hide a `tierwise` command that imports scikit-learn: review finding)."""
    batch = tmp_path / "prompts.jsonl"
    batch.write_text("\n".join(json.dumps({"prompt_id": f"q{i}", "prompt": f"question {i}"}) for i in range(3)))
    out = tmp_path / "decisions.jsonl"
    seen = _run(f"""
        import json, sys
        from training import cli
        import training.tracking  # how `tierwise route` loads the champion from the registry
        from tests.conftest import HashingEmbedder
        cli.make_embedder = lambda *a, **k: HashingEmbedder()
        cli.app(["route", "--batch", {str(batch)!r}, "--out", {str(out)!r}, "--model-uri", {str(artifact_dir)!r}],
                standalone_mode=False)
        print(json.dumps({{"heavy": {_heavy_loaded()}, "serving": "serving" in sys.modules}}))
    """)
    assert [json.loads(line)["prompt_id"] for line in out.read_text().splitlines()] == ["q0", "q1", "q2"]
    assert seen == {"heavy": [], "serving": False}


def test_lightgbm_trains_without_its_sklearn_layer_and_sklearn_stays_importable():
    seen = _run(f"""
        import json, sys
        from router.lean_lightgbm import import_lightgbm_lean
        import_lightgbm_lean()
        import lightgbm, numpy as np
        lean = lightgbm.compat.SKLEARN_INSTALLED
        before = {_heavy_loaded()}
        X = np.random.default_rng(0).normal(size=(200, 3))
        booster = lightgbm.train({{"verbose": -1}}, lightgbm.Dataset(X, label=X[:, 0]), num_boost_round=5)
        from sklearn.model_selection import KFold
        print(json.dumps({{"lean": lean, "before": before, "rows": len(booster.predict(X)),
                          "folds": KFold(3).get_n_splits()}}))
    """)
    assert seen == {"lean": False, "before": [], "rows": 200, "folds": 3}


def test_a_process_that_loaded_sklearn_first_keeps_lightgbms_estimators():
    seen = _run("""
        import json, sklearn
        from router.lean_lightgbm import import_lightgbm_lean
        import_lightgbm_lean()
        import lightgbm
        print(json.dumps({"sklearn_layer": lightgbm.compat.SKLEARN_INSTALLED}))
    """)
    assert seen == {"sklearn_layer": True}


def test_only_the_importing_thread_is_kept_from_sklearn():
    """The lean import hid scikit-learn from every thread of the process while LightGBM loaded (review finding)."""
    seen = _run("""
        import json, sys, threading
        from router.lean_lightgbm import _NoSklearnForThisThread
        sys.meta_path.insert(0, _NoSklearnForThisThread())
        try:
            import sklearn
            mine = "imported"
        except ModuleNotFoundError:
            mine = "refused"
        other = {}
        def load():
            from sklearn.linear_model import Ridge
            other["ok"] = Ridge.__name__
        t = threading.Thread(target=load)
        t.start(); t.join()
        print(json.dumps({"other": other.get("ok"), "mine": mine}))
    """)
    assert seen == {"other": "Ridge", "mine": "refused"}


def test_a_failed_lean_import_leaves_no_half_imported_lightgbm():
    seen = _run("""
        import json, sys
        class Broken:
            def find_spec(self, name, path=None, target=None):
                if name == "lightgbm.engine":
                    raise ImportError("simulated")
        sys.meta_path.insert(0, Broken())
        from router.lean_lightgbm import import_lightgbm_lean
        try:
            import_lightgbm_lean()
            failed = False
        except ImportError:
            failed = True
        left = sorted(m for m in sys.modules if m.split(".")[0] == "lightgbm")
        sys.meta_path.pop(0)
        import sklearn, lightgbm
        print(json.dumps({"failed": failed, "left": left, "sklearn_layer": lightgbm.compat.SKLEARN_INSTALLED}))
    """)
    assert seen == {"failed": True, "left": [], "sklearn_layer": True}
