"""tierwise's HTTP service (FastAPI); `python -m serving` runs it."""

from router.lean_lightgbm import import_lightgbm_lean

import_lightgbm_lean()  # before anything imports LightGBM: the service never uses its scikit-learn layer
