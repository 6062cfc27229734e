"""IrtModel: item-response difficulty router, fitted in two stages (candidate for issue 10).

Stage 1 fits a logistic item-response model to the train outcome matrix,
    logit P(model j solves prompt p) = d_p + c_j + u_p . v_j,
with prompt easiness d_p, prompt aptitude vector u_p (n_factors dims), model ability c_j and model
profile v_j. The likelihood is Bernoulli on soft labels, so graded scores in [0, 1] work. Stage 2
regresses each prompt's latent parameters (d_p, u_p) on its features; a prompt's predicted score for
model j combines the predicted latents with the model's fitted ability and profile.

Why: per-tier boosters each learn from one noisy 0/1 label per prompt; d_p pools the evidence of every
model in the log (also models behind no tier), so the regression target is a denoised difficulty.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import lightgbm as lgb
import numpy as np

from router.boosting import BoostParams, check_features, check_training


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return np.asarray(0.5 * (1.0 + np.tanh(0.5 * z)))


def fit_irt(
    Y: np.ndarray, n_factors: int, l2_prompt: float, l2_model: float, max_iter: int = 500, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Fit (d, U, c, V) by L-BFGS on the mean Bernoulli log-loss over observed cells plus L2 penalties.

    Y is (n, k) with values in [0, 1] and NaN where unobserved. Returns d (n,), U (n, r), c (k,), V (k, r).
    """
    Y = np.asarray(Y, dtype=np.float64)
    n, k = Y.shape
    r = n_factors
    obs = np.isfinite(Y)
    y = np.where(obs, Y, 0.0)
    m = obs.astype(np.float64)
    n_obs = max(float(m.sum()), 1.0)
    rng = np.random.default_rng(seed)
    col_mean = np.clip(np.nanmean(np.where(obs, Y, np.nan), axis=0), 0.02, 0.98)
    x0 = np.concatenate(
        [
            np.zeros(n),
            rng.normal(0, 0.1, n * r),
            np.log(col_mean / (1 - col_mean)),
            rng.normal(0, 0.1, k * r),
        ]
    )

    def unpack(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        d = x[:n]
        U = x[n : n + n * r].reshape(n, r)
        c = x[n + n * r : n + n * r + k]
        V = x[n + n * r + k :].reshape(k, r)
        return d, U, c, V

    def loss_grad(x: np.ndarray) -> tuple[float, np.ndarray]:
        d, U, c, V = unpack(x)
        z = d[:, None] + c[None, :] + U @ V.T
        # log(1 + e^z) - y z, stable
        nll = (np.logaddexp(0.0, z) - y * z) * m
        g = (_sigmoid(z) - y) * m / n_obs
        loss = nll.sum() / n_obs
        loss += l2_prompt * (np.sum(d**2) + np.sum(U**2)) / n + l2_model * np.sum(V**2) / k
        gd = g.sum(axis=1) + 2 * l2_prompt * d / n
        gU = g @ V + 2 * l2_prompt * U / n
        gc = g.sum(axis=0)
        gV = g.T @ U + 2 * l2_model * V / k
        return float(loss), np.concatenate([gd, gU.ravel(), gc, gV.ravel()])

    from scipy.optimize import minimize  # training only: serving never imports it (router/lean_lightgbm.py)

    res = minimize(loss_grad, x0, jac=True, method="L-BFGS-B", options={"maxiter": max_iter})
    return unpack(res.x)


@dataclass(eq=False, kw_only=True)
class IrtModel(BoostParams):
    """Two-stage IRT router: fit latents on outcomes, regress them on prompt features, combine.

    `n_factors=0` is a one-parameter (difficulty only) model: every model's predicted score is a
    monotone function of the same predicted difficulty, shifted by the model's ability. The boosting
    parameters are stage 2's (`regressor="lgbm"`).
    """

    n_factors: int = 1
    l2_prompt: float = 0.05
    l2_model: float = 0.01
    ridge_alpha: float = 10.0
    uncertainty_folds: int = 3
    regressor: Literal["lgbm", "ridge"] = "lgbm"
    # stage 2's boosting defaults
    n_estimators: int = 600
    learning_rate: float = 0.03
    num_leaves: int = 8
    colsample_bytree: float = 0.2

    def _fit_regressor(self, X: np.ndarray, t: np.ndarray) -> Any:
        if self.regressor == "ridge":
            from sklearn.linear_model import Ridge  # training only, as above

            return Ridge(alpha=self.ridge_alpha).fit(X, t)
        return lgb.train(self.lgb_params("regression"), lgb.Dataset(X, label=t), num_boost_round=self.n_estimators)

    def fit(self, X: np.ndarray, Y: np.ndarray, names: Sequence[str]) -> IrtModel:
        """Fit on features X (n, d) and scores Y (n, k) in [0, 1], NaN where a model has no outcome."""
        X, Y = check_training(X, Y, len(names), "models")
        keep = np.isfinite(Y).any(axis=1)
        X, Y = X[keep], Y[keep]
        d, U, c, V = fit_irt(Y, self.n_factors, self.l2_prompt, self.l2_model, seed=self.random_state)
        self.names_ = list(names)
        self.n_features_in_ = X.shape[1]
        self.ability_, self.profile_ = c, V
        targets = np.column_stack([d, U])
        self.regressors_ = [self._fit_regressor(X, targets[:, i]) for i in range(targets.shape[1])]
        self.latent_var_ = self._oof_variance(X, targets) if self.uncertainty_folds > 1 else np.zeros(targets.shape[1])
        return self

    def _oof_variance(self, X: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """Out-of-fold residual variance of each latent: how unsure stage 2 is, used to soften predictions."""
        oof = np.zeros_like(targets)
        from sklearn.model_selection import KFold  # training only, as above

        folds = KFold(self.uncertainty_folds, shuffle=True, random_state=self.random_state)
        for tr, held in folds.split(X):
            for i in range(targets.shape[1]):
                oof[held, i] = self._fit_regressor(X[tr], targets[tr, i]).predict(X[held])
        return np.asarray(((oof - targets) ** 2).mean(axis=0))

    def predict_latents(self, X: np.ndarray) -> np.ndarray:
        """Predicted (d, u_1..u_r) per prompt, (n, 1 + n_factors)."""
        X = check_features(self, "regressors_", X, "predict_latents")
        return np.column_stack([np.asarray(reg.predict(X)) for reg in self.regressors_])

    def predict_quality(self, X: np.ndarray) -> np.ndarray:
        """Expected score per model, (n, k) in `names_` order.

        The logit is Gaussian-uncertain (stage-2 residual variance); the probit approximation
        E[sigmoid(z)] ~ sigmoid(mean / sqrt(1 + pi var / 8)) keeps predictions calibrated.
        """
        lat = self.predict_latents(X)
        d, U = lat[:, 0], lat[:, 1:]
        z = d[:, None] + self.ability_[None, :] + U @ self.profile_.T
        var = self.latent_var_[0] + (self.profile_**2) @ self.latent_var_[1:]
        return np.asarray(np.clip(_sigmoid(z / np.sqrt(1.0 + np.pi * var[None, :] / 8.0)), 0.0, 1.0))
