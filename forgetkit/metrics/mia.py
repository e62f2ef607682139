"""Membership inference: per-example scores and ROC AUC of members (e.g. the forget set) against
non-members (a held-out set the model never saw).

Every score is oriented so that *higher means "looks like training data"*:
- loss: -mean NLL of the target tokens (Yeom et al. 2018);
- zlib: -(mean NLL) / zlib-compressed length of the target text in bytes (Carlini et al. 2021);
- min_k: mean log-probability of the k% least likely target tokens (Shi et al. 2024, k = 0.4);
- min_k_pp: the same over Min-K%++ z-scores (Zhang et al. 2024).
An AUC of 0.5 means members and non-members look alike; 1.0 means every member is detectable, and
0.0 means they are detectable too (their scores are all lower: the "Streisand effect" of
over-unlearning).
"""

from __future__ import annotations

import math
import zlib
from typing import Sequence

import numpy as np
from scipy.stats import rankdata

SCORES = ("loss", "zlib", "min_k", "min_k_pp")
MIN_K = 0.4


def lowest_fraction_mean(values: Sequence[float], fraction: float) -> float:
    count = max(1, int(math.ceil(len(values) * fraction)))
    return float(np.mean(np.sort(np.asarray(values, dtype=np.float64))[:count]))


def zlib_length(text: str) -> int:
    return len(zlib.compress(text.encode("utf-8")))


def membership_scores(per_token: dict[str, list[float]], target_text: str, k: float = MIN_K) -> dict[str, float]:
    """All four scores of one example from its teacher-forced token statistics."""
    nll = per_token["nll"]
    mean_nll = float(np.mean(nll))
    return {
        "loss": -mean_nll,
        "zlib": -mean_nll / zlib_length(target_text),
        "min_k": lowest_fraction_mean([-x for x in nll], k),
        "min_k_pp": lowest_fraction_mean(per_token["zscore"], k),
    }


def roc_auc(members: Sequence[float], non_members: Sequence[float]) -> float:
    """P(score of a random member > score of a random non-member), ties counting half
    (the Mann-Whitney U statistic over n*m, which equals the area under the ROC curve)."""
    n, m = len(members), len(non_members)
    if n == 0 or m == 0:
        raise ValueError("AUC needs at least one member and one non-member")
    ranks = rankdata(np.concatenate([np.asarray(members, float), np.asarray(non_members, float)]))
    u = ranks[:n].sum() - n * (n + 1) / 2
    return float(u / (n * m))


def roc_curve(members: Sequence[float], non_members: Sequence[float]) -> dict[str, list[float]]:
    """False- and true-positive rates at every distinct threshold, from (0, 0) to (1, 1)."""
    scores = np.concatenate([np.asarray(members, float), np.asarray(non_members, float)])
    labels = np.concatenate([np.ones(len(members)), np.zeros(len(non_members))])
    order = np.argsort(-scores, kind="mergesort")
    scores, labels = scores[order], labels[order]
    last_of_group = np.r_[np.diff(scores) != 0, True]
    tps = np.cumsum(labels)[last_of_group]
    fps = np.cumsum(1 - labels)[last_of_group]
    tpr = np.r_[0.0, tps / max(len(members), 1)]
    fpr = np.r_[0.0, fps / max(len(non_members), 1)]
    return {"fpr": [round(float(x), 6) for x in fpr], "tpr": [round(float(x), 6) for x in tpr]}


def privleak(auc: float, reference_auc: float) -> float:
    """MUSE's PrivLeak: (AUC - AUC_reference) / AUC_reference; 0 means the unlearned model leaks
    membership exactly as much as a model never trained on the forget set."""
    return (auc - reference_auc) / reference_auc
