"""Import LightGBM without its scikit-learn layer, in the processes that load boosters and predict.

LightGBM imports scikit-learn (and through it `scipy.stats`) whenever scikit-learn is installed, only to define
its scikit-learn estimators (`LGBMRegressor`, ...). tierwise never uses them: `lgb.train`, `lgb.Dataset` and
`lgb.Booster` work without. Without it (and with training's own scikit-learn and SciPy
imports moved into the functions that fit), importing the service took 0.78 s instead of 1.29 s and 70 MB less
memory on a Zen 5, in every worker; a one-prompt `tierwise route --batch` took 1.68 s instead of 2.34 s.

`import_lightgbm_lean()` is called by the application packages (`serving`, and `training`, which holds the
`tierwise` command) before anything imports LightGBM. It is not called on `import router`: a program that uses
tierwise as a library and LightGBM's scikit-learn estimators keeps them.
"""

from __future__ import annotations

import sys


def import_lightgbm_lean() -> None:
    """Import LightGBM with scikit-learn hidden from it, unless either is loaded already (then nothing changes).

    scikit-learn stays importable afterwards (training imports it where it needs it); only LightGBM's own
    scikit-learn estimators are missing from this process.
    """
    if "lightgbm" in sys.modules or "sklearn" in sys.modules:
        return
    sys.modules["sklearn"] = None  # type: ignore[assignment]  # `import sklearn` raises ImportError: LightGBM skips it
    try:
        import lightgbm  # noqa: F401
    finally:
        del sys.modules["sklearn"]
