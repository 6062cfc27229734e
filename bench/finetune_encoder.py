"""A fine-tuned MiniLM head for tier quality (issue 10 experiment: does training the encoder on outcomes find the
within-task difficulty that frozen mean-pooled embeddings miss?).

Two trainable heads over the bundled all-MiniLM-L6-v2 (torch, CPU), both predicting every model of the log at once
(one logit per model, binary cross-entropy on the scores, graded scores included, missing ones masked):
- `top`: MiniLM's top `layers` transformer layers are fine-tuned (initialised from MiniLM), then mean pooling and a
  linear head. The layers below are frozen, so their token states are computed once per prompt (`TokenStates`) and
  each epoch runs only the trained layers.
- `attention`: the whole encoder frozen; a learned attention pooling of the last layer's token states beside their
  mean, then a small MLP. It can weigh the question over a few-shot prefix, which a mean cannot.

The epoch is chosen on a validation tenth of the train prompts (lowest masked BCE); training then stops. Research
code for bench/quality_finetune.py; nothing in the shipped router imports it.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from router.embedders.torch import minilm_path

MAX_TOKENS = 256  # what MiniLM reads (sentence-transformers' max_seq_length for all-MiniLM-L6-v2)
WIDTH = 384


@dataclass
class TokenStates:
    """Per prompt, MiniLM's token states below the trained layers and at its top (float16, unpadded)."""

    below: list[np.ndarray]  # input of the top `layers` layers, (tokens, 384) each
    top: list[np.ndarray]  # the last layer's output, (tokens, 384) each
    layers: int


class Encoder:
    """The bundled MiniLM in torch: its tokenizer, its frozen layers, and copies of its top layers to fine-tune."""

    def __init__(self) -> None:
        from sentence_transformers import SentenceTransformer

        st: Any = SentenceTransformer(str(minilm_path()), device="cpu")
        self.tokenizer = st.tokenizer
        self.bert: Any = st[0].auto_model.eval()

    def token_states(self, texts: Sequence[str], layers: int, batch: int = 64) -> TokenStates:
        """Token states of every text (by length-sorted batches, no gradients)."""
        n_layers = len(self.bert.encoder.layer)
        order = np.argsort([len(t) for t in texts])
        below: list[np.ndarray] = [np.empty(0)] * len(texts)
        top: list[np.ndarray] = [np.empty(0)] * len(texts)
        with torch.inference_mode():
            for start in range(0, len(texts), batch):
                idx = order[start : start + batch]
                enc = self.tokenizer(
                    [texts[i] for i in idx],
                    padding=True,
                    truncation=True,
                    max_length=MAX_TOKENS,
                    return_tensors="pt",
                )
                out = self.bert(**enc, output_hidden_states=True)
                hs = out.hidden_states
                lengths = enc["attention_mask"].sum(1).tolist()
                for row, i in enumerate(idx):
                    k = int(lengths[row])
                    below[i] = hs[n_layers - layers][row, :k].to(torch.float16).numpy()
                    top[i] = hs[n_layers][row, :k].to(torch.float16).numpy()
        return TokenStates(below, top, layers)

    def top_layers(self, layers: int) -> nn.ModuleList:
        return nn.ModuleList(copy.deepcopy(list(self.bert.encoder.layer[-layers:])))


def _padded(states: list[np.ndarray], rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    longest = max(len(states[i]) for i in rows)
    h = torch.zeros(len(rows), longest, WIDTH)
    mask = torch.zeros(len(rows), longest)
    for r, i in enumerate(rows):
        k = len(states[i])
        h[r, :k] = torch.from_numpy(states[i].astype(np.float32))
        mask[r, :k] = 1.0
    return h, mask


def _mean(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)


class TopLayers(nn.Module):
    """Fine-tuned top layers of MiniLM, mean pooling, one logit per model."""

    def __init__(self, layers: nn.ModuleList, n_out: int):
        super().__init__()
        self.layers = layers
        self.head = nn.Linear(WIDTH, n_out)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        additive = (1.0 - mask)[:, None, None, :] * torch.finfo(h.dtype).min
        for layer in self.layers:
            h = layer(h, attention_mask=additive)
        return self.head(_mean(h, mask))


class AttentionPool(nn.Module):
    """Learned attention pooling beside the mean of frozen token states, then a small MLP, one logit per model."""

    def __init__(self, n_out: int, hidden: int = 256, dropout: float = 0.1):
        super().__init__()
        self.score = nn.Linear(WIDTH, 1)
        self.mlp = nn.Sequential(nn.Linear(2 * WIDTH, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, n_out))

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        a = self.score(h).squeeze(-1).masked_fill(mask == 0, float("-inf")).softmax(-1)
        return self.mlp(torch.cat([(a[..., None] * h).sum(1), _mean(h, mask)], dim=1))


def masked_bce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    have = torch.isfinite(y)
    return nn.functional.binary_cross_entropy_with_logits(logits[have], y[have])


@dataclass
class FitReport:
    best_epoch: int
    val_loss: list[float]


class FinetunedQuality:
    """Predicted score of every model of the log from a prompt's MiniLM token states (see the module docstring)."""

    def __init__(
        self,
        kind: Literal["top", "attention"],
        encoder: Encoder,
        *,
        layers: int = 1,
        epochs: int = 6,
        batch: int = 32,
        lr_layers: float = 3e-5,
        lr_head: float = 1e-3,
        weight_decay: float = 0.01,
        val_share: float = 0.1,
        seed: int = 0,
    ):
        self.kind, self.encoder, self.layers = kind, encoder, layers
        self.epochs, self.batch, self.lr_layers, self.lr_head = epochs, batch, lr_layers, lr_head
        self.weight_decay, self.val_share, self.seed = weight_decay, val_share, seed
        self.model: nn.Module | None = None
        self.report: FitReport | None = None

    def _inputs(self, states: TokenStates) -> list[np.ndarray]:
        return states.below if self.kind == "top" else states.top

    def _new_model(self, n_out: int, prior: np.ndarray) -> nn.Module:
        model: nn.Module = (
            TopLayers(self.encoder.top_layers(self.layers), n_out) if self.kind == "top" else AttentionPool(n_out)
        )
        head = _head(model)
        with torch.no_grad():  # start at each model's mean score
            p = np.clip(prior, 0.02, 0.98)
            head.bias.copy_(torch.from_numpy(np.log(p / (1 - p))).float())
        return model

    def _optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        if self.kind == "top":
            assert isinstance(model, TopLayers)
            groups = [
                {"params": model.layers.parameters(), "lr": self.lr_layers},
                {"params": model.head.parameters(), "lr": self.lr_head},
            ]
        else:
            groups = [{"params": model.parameters(), "lr": self.lr_head}]
        return torch.optim.AdamW(groups, weight_decay=self.weight_decay)

    def _batches(self, inputs: list[np.ndarray], rows: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
        """Batches of similar length (less padding), in random order."""
        by_len = rows[np.argsort([len(inputs[i]) + rng.random() for i in rows], kind="stable")]
        chunks = [by_len[i : i + self.batch] for i in range(0, len(by_len), self.batch)]
        return [chunks[i] for i in rng.permutation(len(chunks))]

    def _loss(self, model: nn.Module, inputs: list[np.ndarray], Y: np.ndarray, rows: np.ndarray) -> float:
        model.eval()
        total, count = 0.0, 0
        with torch.inference_mode():
            for start in range(0, len(rows), 128):
                idx = rows[start : start + 128]
                y = torch.from_numpy(Y[idx]).float()
                n = int(torch.isfinite(y).sum())
                if n:
                    total += float(masked_bce(model(*_padded(inputs, idx)), y)) * n
                    count += n
        return total / max(count, 1)

    def fit(self, states: TokenStates, Y: np.ndarray) -> FinetunedQuality:
        """Train on every row of `states` (train prompts only) against Y (rows × models, NaN = not observed)."""
        torch.manual_seed(self.seed)
        rng = np.random.default_rng(self.seed)
        inputs = self._inputs(states)
        n = len(inputs)
        perm = rng.permutation(n)
        n_val = max(1, int(round(self.val_share * n)))
        val, fit_rows = perm[:n_val], perm[n_val:]
        model = self._new_model(Y.shape[1], np.nan_to_num(np.nanmean(Y[fit_rows], axis=0), nan=0.5))
        opt = self._optimizer(model)
        steps = self.epochs * math.ceil(len(fit_rows) / self.batch)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / (0.1 * steps + 1)))
        best, best_state, losses = math.inf, copy.deepcopy(model.state_dict()), []
        best_epoch = 0
        for epoch in range(self.epochs):
            model.train()
            for idx in self._batches(inputs, fit_rows, rng):
                y = torch.from_numpy(Y[idx]).float()
                if not torch.isfinite(y).any():
                    continue
                loss = masked_bce(model(*_padded(inputs, idx)), y)
                opt.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                sched.step()
            losses.append(self._loss(model, inputs, Y, val))
            if losses[-1] < best:
                best, best_state, best_epoch = losses[-1], copy.deepcopy(model.state_dict()), epoch + 1
            elif epoch + 1 - best_epoch >= 2:
                break
        model.load_state_dict(best_state)
        self.model, self.report = model.eval(), FitReport(best_epoch, [round(v, 5) for v in losses])
        return self

    def predict(self, states: TokenStates) -> np.ndarray:
        """Predicted score of every model (rows × models)."""
        assert self.model is not None, "fit first"
        inputs = self._inputs(states)
        order = np.argsort([len(x) for x in inputs], kind="stable")
        out = np.zeros((len(inputs), self.model_outputs))
        with torch.inference_mode():
            for start in range(0, len(order), 128):
                idx = order[start : start + 128]
                out[idx] = torch.sigmoid(self.model(*_padded(inputs, idx))).numpy()
        return out

    @property
    def model_outputs(self) -> int:
        assert self.model is not None
        return int(_head(self.model).out_features)


def _head(model: nn.Module) -> nn.Linear:
    """The last linear layer of a head: one logit per model."""
    head = model.head if isinstance(model, TopLayers) else model.mlp[-1]  # type: ignore[index]
    assert isinstance(head, nn.Linear)
    return head


def subset(states: TokenStates, rows: np.ndarray) -> TokenStates:
    return TokenStates([states.below[i] for i in rows], [states.top[i] for i in rows], states.layers)
