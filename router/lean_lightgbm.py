"""Import LightGBM without its scikit-learn layer, in the processes that load boosters and predict.

LightGBM imports scikit-learn (and through it `scipy.stats`) whenever scikit-learn is installed, only to define
its scikit-learn estimators (`LGBMRegressor`, ...). tierwise never uses them: `lgb.train`, `lgb.Dataset` and
`lgb.Booster` work without. Without it (and with training's own scikit-learn and SciPy imports moved into the
functions that fit), `import serving.app` took 0.78 s instead of 1.29 s and 70 MB less memory on a Zen 5, in
every worker, and a one-prompt `tierwise route --batch` 0.76 s instead of 1.21 s
(bench/results/lean_imports_zen5.json).

`import_lightgbm_lean()` runs when the application packages are imported (`serving`, and `training`, which holds
the `tierwise` command), before anything imports LightGBM; so importing any of their modules loads LightGBM. In
such a process, LightGBM's scikit-learn estimators (`LGBMRegressor`, `DaskLGBMRegressor`, ...) and `lgb.cv` with
its default `stratified=True` are unavailable, even after scikit-learn is imported: a notebook that needs them
imports `lightgbm` (or `sklearn`) before `training`. `import router` alone leaves LightGBM as it is.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType


class _NoSklearnForThisThread:
    """A finder that makes `import sklearn` fail in one thread (the one importing LightGBM); others are untouched."""

    def __init__(self) -> None:
        self.thread = threading.get_ident()

    def find_spec(
        self,
        name: str,
        path: Sequence[str] | None = None,  # noqa: ARG002 - the finder protocol's
        target: ModuleType | None = None,  # noqa: ARG002 - as above
    ) -> ModuleSpec | None:
        if threading.get_ident() == self.thread and (name == "sklearn" or name.startswith("sklearn.")):
            raise ModuleNotFoundError(f"{name} is not imported for LightGBM here (router/lean_lightgbm.py)", name=name)
        return None


def import_lightgbm_lean() -> None:
    """Import LightGBM with scikit-learn hidden from it, unless either is loaded already (then nothing changes).

    scikit-learn stays importable (training imports it where it fits); only LightGBM's scikit-learn layer is missing
    from this process (module docstring). If the import fails, no half-imported LightGBM is left behind.
    """
    if "lightgbm" in sys.modules or "sklearn" in sys.modules:
        return
    finder = _NoSklearnForThisThread()
    sys.meta_path.insert(0, finder)
    try:
        import lightgbm  # noqa: F401
    except BaseException:
        for name in [m for m in sys.modules if m == "lightgbm" or m.startswith("lightgbm.")]:
            del sys.modules[name]
        raise
    finally:
        sys.meta_path.remove(finder)
