"""The classifier head's start as a linear probe of the frozen model (``train.probe_head``).

Linear probe, then fine-tune (Kumar et al., ICLR 2022): a random head's first updates follow noise, and
on a few hundred real votes LoRA stops before it learns anything (issue 15). The probe instead reads
what the frozen model already encodes, in one cheap pass: the pooled final hidden states of every
training pair (as given, ``h_ab``) and of its swap (``h_ba``; ``train.swap_augment`` puts both in the
training set), an L2 logistic regression without intercept on ``d = h_ab - h_ba`` (antisymmetric, so a
position bias cannot be fitted), and the head ``[w, -w]``: under swap TTA in log-odds space
(``inference.tta_average: log_odds``) its logit difference averages to ``w . d``, the probe's own logit,
while the mean of the two probabilities shrinks it wherever the position part ``w . (h_ab + h_ba)`` is large.
"""
from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from .errors import ConfigError

log = logging.getLogger(__name__)


def fit_pair_probe(diff: np.ndarray, a_wins: np.ndarray, l2: float) -> np.ndarray:
    """Weights ``w`` (raw feature scale) of P(a wins) = sigmoid(w . diff), L2-penalised on standardized
    features: minimises mean softplus(-s w.x) + l2 / 2 |w|^2 with s = +-1 (full-batch L-BFGS, float64)."""
    import torch

    x = torch.as_tensor(diff, dtype=torch.float64)
    scale = x.std(0).clamp(min=1e-12) if len(x) > 1 else torch.ones(x.shape[1], dtype=torch.float64)
    xs, sign = x / scale, torch.as_tensor(np.where(a_wins, 1.0, -1.0))
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=500, tolerance_grad=1e-9, line_search_fn="strong_wolfe")

    def loss():
        opt.zero_grad()
        value = torch.nn.functional.softplus(-sign * (xs @ w)).mean() + l2 / 2 * w.pow(2).sum()
        value.backward()
        return value

    opt.step(loss)
    return (w.detach() / scale).numpy()


def pooled_features(model, encoded, pad_id: int, padding_side: str, pooling: str, batch_size: int,
                    pool=None) -> np.ndarray:
    """Pooled final hidden states [rows, hidden] of the rows of ``encoded`` (EncodedPairs), no gradients.
    ``pool(model, input_ids, attention_mask)``: another pooling of each batch ([n, ...]; default: the score
    layer's input pooled as ``pooling``)."""
    import torch
    from tqdm.auto import tqdm

    from .batching import collate
    from .modeling import pooled_hidden_states

    pool = pool or (lambda m, ids, mask: pooled_hidden_states(m, ids, mask, pooling))
    order = np.argsort(-encoded.lengths, kind="stable")
    device = next(model.parameters()).device
    features = None
    was_training = model.training
    model.eval()
    try:
        for start in tqdm(range(0, len(order), batch_size), desc="probe features", unit="batch"):
            rows = order[start:start + batch_size]
            batch = collate([encoded.input_ids[int(r)] for r in rows], pad_id, padding_side)
            with torch.inference_mode():
                pooled = pool(model, batch["input_ids"].to(device), batch["attention_mask"].to(device))
            if features is None:
                features = np.zeros((len(order), *pooled.shape[1:]), dtype=np.float32)
            features[rows] = pooled.float().cpu().numpy()
    finally:
        model.train(was_training)
    return features


def probe_head(model, family, encoded, pad_id: int, pooling: str, l2: float, batch_size: int) -> dict[str, Any]:
    """Fit the head of ``model`` as a linear probe of ``encoded`` (training rows [0, n) as given, [n, 2n)
    their swaps, as ``training.augmented_frame`` lays them out); returns what it measured."""
    import torch

    from .modeling import set_head_weight

    n = len(encoded) // 2
    labels = encoded.labels[:n]
    labeled = np.isin(labels, (0, 1))
    if not labeled.any():
        raise ConfigError("train.probe_head needs hard labels (0 = a wins, 1 = b wins) and the training rows "
                          "have none; set train.probe_head=false")
    started = time.monotonic()
    features = pooled_features(model, encoded, pad_id, family.padding_side, pooling, batch_size)
    diff = (features[:n] - features[n:])[labeled]
    a_wins = labels[labeled] == 0
    w = fit_pair_probe(diff, a_wins, l2)
    weight = torch.as_tensor(np.stack([w, -w]), dtype=torch.float32)
    set_head_weight(model, family, weight)
    summary = {"rows": int(labeled.sum()), "l2": l2, "seconds": round(time.monotonic() - started, 1),
               "train_accuracy": float(np.mean((diff @ w > 0) == a_wins))}
    log.info("probe head: fitted on %(rows)d pairs in %(seconds)s s, training accuracy %(train_accuracy).3f",
             summary)
    return summary
