"""tierwise's training, evaluation and the `tierwise` command."""

from router.lean_lightgbm import import_lightgbm_lean

import_lightgbm_lean()  # before anything imports LightGBM: tierwise never uses its scikit-learn layer
