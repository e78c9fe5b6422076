"""Does the virtual IHC get the same HER2 reading as the real one? Agreement statistics, each with its definition.

Scores are compared over the pairs where **both** tiles are scorable (the
others are counted and reported, never scored as 0). With ``k = 4`` ordered
classes (0, 1+, 2+, 3+), ``O`` the confusion matrix (rows: real, columns:
virtual) and ``E`` the outer product of its marginals divided by ``n``:

- **accuracy** = trace(O) / n;
- **quadratic-weighted kappa** = 1 - sum(W * O) / sum(W * E) with
  ``W[i, j] = (i - j)^2 / (k - 1)^2`` (Cohen 1968); undefined (NaN) when
  ``sum(W * E) = 0`` (every pair in one class);
- its **95 % CI**: percentile bootstrap over pairs (2000 resamples, seed 0);
- **recall** of each real class: O[c, c] / sum(O[c, :]);
- **H-score difference**: virtual minus real per pair, its mean (bias), the
  mean absolute difference (MAE), and Bland-Altman limits of agreement
  bias +- 1.96 SD (sample SD).

Pixel-level DAB measures, per tile pair, on the DAB optical density
(``skimage.color.rgb2hed``'s DAB x 6, decadic OD as QuPath's):

- **DAB Pearson r**: Pearson correlation of the two tiles' DAB OD over all
  pixels (NaN when either tile is uniform);
- **DAB KL**: Kullback-Leibler divergence KL(P_real || P_virtual) in nats of
  the DAB OD histograms, 64 bins over [0, 2.5] OD (values above go in the
  last bin), each bin + 1e-6 before normalising;
- **IOD**: integrated optical density, the sum of DAB OD over the tile's
  pixels; its relative difference (IOD_virtual - IOD_real) / IOD_real (NaN
  when IOD_real = 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tdkstain.knowledge.stain import OD_PER_HED_UNIT, dab_od
from tdkstain.scoring.her2 import SCORES

__all__ = [
    "DAB_BINS",
    "DAB_RANGE",
    "DEFINITIONS",
    "ScoreAgreement",
    "confusion_matrix",
    "dab_measures",
    "quadratic_kappa",
    "score_agreement",
]

K = len(SCORES)
DAB_BINS = 64
DAB_RANGE = (0.0, 2.5)
KL_EPSILON = 1e-6
BOOTSTRAP_RESAMPLES = 2000

# What each reported number means, written into metrics.json and the HTML report.
DEFINITIONS: dict[str, str] = {
    "her2_pairs_scored": "tile pairs where both the real and the virtual IHC were scorable (>= min_cells tumour cells)",
    "her2_accuracy": "fraction of scored pairs whose virtual HER2 score equals the real one",
    "her2_kappa": "quadratic-weighted Cohen's kappa of the virtual vs the real score (0, 1+, 2+, 3+): "
                  "1 - sum(W*O)/sum(W*E), W[i,j] = (i-j)^2/9, O the confusion matrix, E its marginals' product / n",
    "her2_kappa_ci95": "95 % percentile bootstrap interval of the kappa (2000 resamples of the pairs, seed 0)",
    "her2_recall": "per real score: fraction of its pairs the virtual IHC scores the same",
    "h_score_bias": "mean of (virtual - real) H-score over scored pairs; H-score = %weak + 2 %moderate + 3 %strong (0-300)",
    "h_score_mae": "mean absolute (virtual - real) H-score difference",
    "h_score_loa": "Bland-Altman 95 % limits of agreement: bias +- 1.96 x SD of the differences",
    "dab_pearson_r": "per tile pair, Pearson r of the DAB optical density (rgb2hed DAB x 6) over all pixels; mean over tiles",
    "dab_kl": "per tile pair, KL(P_real || P_virtual) in nats of DAB OD histograms (64 bins on [0, 2.5], +1e-6); mean over tiles",
    "iod_rel_diff": "per tile pair, (IOD_virtual - IOD_real) / IOD_real, IOD = sum of DAB OD over the pixels; mean over tiles",
    "iod_abs_rel_diff": "mean over tiles of |IOD_virtual - IOD_real| / IOD_real",
}


def confusion_matrix(real: list[int], virtual: list[int], k: int = K) -> np.ndarray:
    """(k, k) int64 counts: rows the real class, columns the virtual class (classes 0..k-1)."""
    out = np.zeros((k, k), np.int64)
    np.add.at(out, (np.asarray(real, np.int64), np.asarray(virtual, np.int64)), 1)
    return out


def _kappa_of(confusion: np.ndarray) -> float:
    k = confusion.shape[0]
    n = confusion.sum()
    if n == 0:
        return math.nan
    i, j = np.indices((k, k))
    w = (i - j) ** 2 / (k - 1) ** 2
    expected = np.outer(confusion.sum(axis=1), confusion.sum(axis=0)) / n
    denominator = float((w * expected).sum())
    if denominator == 0:
        return math.nan
    return 1.0 - float((w * confusion).sum()) / denominator


def quadratic_kappa(real: list[int], virtual: list[int], k: int = K) -> float:
    """Quadratic-weighted Cohen's kappa (see the module docstring); NaN when undefined."""
    return _kappa_of(confusion_matrix(real, virtual, k))


def _bootstrap_ci(real: np.ndarray, virtual: np.ndarray, k: int, resamples: int, seed: int) -> tuple[float, float]:
    n = len(real)
    if n < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(resamples, n))
    values = []
    for idx in draws:
        value = _kappa_of(confusion_matrix(real[idx], virtual[idx], k))
        if not math.isnan(value):
            values.append(value)
    if len(values) < resamples // 2:  # mostly degenerate resamples: no honest interval
        return math.nan, math.nan
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


@dataclass
class ScoreAgreement:
    """Agreement of virtual with real HER2 scores over tile pairs."""

    pairs: int  # all pairs
    scored: int  # both scorable
    not_scorable_real: int
    not_scorable_virtual: int
    confusion: list[list[int]]  # rows real, columns virtual, classes SCORES
    accuracy: float
    kappa: float
    kappa_ci95: tuple[float, float]
    recall: dict[str, float]  # per real class (NaN when it has no pair)
    h_score_bias: float
    h_score_mae: float
    h_score_sd: float
    h_score_loa: tuple[float, float]
    h_score_pairs: list[tuple[float, float]]  # (real, virtual) per scored pair, for the Bland-Altman plot

    def to_dict(self) -> dict:
        return {
            "pairs": self.pairs, "scored": self.scored, "not_scorable_real": self.not_scorable_real,
            "not_scorable_virtual": self.not_scorable_virtual, "classes": list(SCORES), "confusion": self.confusion,
            "accuracy": self.accuracy, "kappa": self.kappa, "kappa_ci95": list(self.kappa_ci95), "recall": self.recall,
            "h_score_bias": self.h_score_bias, "h_score_mae": self.h_score_mae, "h_score_sd": self.h_score_sd,
            "h_score_loa": list(self.h_score_loa),
        }


def score_agreement(
    real: list[str | None], virtual: list[str | None], h_real: list[float] | None = None,
    h_virtual: list[float] | None = None, *, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0,
) -> ScoreAgreement:
    """Agreement of paired scores (``"0"``..``"3+"``, None = not scorable) and H-scores (see the module docstring)."""
    if len(real) != len(virtual):
        raise ValueError(f"{len(real)} real scores but {len(virtual)} virtual ones")
    both = [i for i, (r, v) in enumerate(zip(real, virtual)) if r in SCORES and v in SCORES]
    r = np.array([SCORES.index(real[i]) for i in both], np.int64)
    v = np.array([SCORES.index(virtual[i]) for i in both], np.int64)
    confusion = confusion_matrix(r, v)
    n = len(both)
    recall = {}
    for c, label in enumerate(SCORES):
        row = confusion[c].sum()
        recall[label] = float(confusion[c, c] / row) if row else math.nan
    if h_real is not None and h_virtual is not None and n:
        hr = np.array([h_real[i] for i in both], np.float64)
        hv = np.array([h_virtual[i] for i in both], np.float64)
        diff = hv - hr
        bias, mae = float(diff.mean()), float(np.abs(diff).mean())
        sd = float(diff.std(ddof=1)) if n > 1 else math.nan
        loa = (bias - 1.96 * sd, bias + 1.96 * sd)
        h_pairs = [(float(a), float(b)) for a, b in zip(hr, hv)]
    else:
        bias = mae = sd = math.nan
        loa = (math.nan, math.nan)
        h_pairs = []
    return ScoreAgreement(
        pairs=len(real), scored=n,
        not_scorable_real=sum(x not in SCORES for x in real), not_scorable_virtual=sum(x not in SCORES for x in virtual),
        confusion=confusion.tolist(), accuracy=float(np.trace(confusion) / n) if n else math.nan,
        kappa=_kappa_of(confusion), kappa_ci95=_bootstrap_ci(r, v, K, resamples, seed), recall=recall,
        h_score_bias=bias, h_score_mae=mae, h_score_sd=sd, h_score_loa=loa, h_score_pairs=h_pairs,
    )


def dab_measures(real: np.ndarray, virtual: np.ndarray) -> dict[str, float]:
    """Pixel-level DAB agreement of one tile pair: Pearson r, KL of histograms, IODs (module docstring)."""
    a = (dab_od(real) * OD_PER_HED_UNIT).ravel()
    b = (dab_od(virtual) * OD_PER_HED_UNIT).ravel()
    if a.shape != b.shape:
        raise ValueError(f"tiles differ in size: {real.shape} vs {virtual.shape}")
    sa, sb = a.std(), b.std()
    pearson = float(((a - a.mean()) * (b - b.mean())).mean() / (sa * sb)) if sa > 0 and sb > 0 else math.nan
    edges = np.linspace(*DAB_RANGE, DAB_BINS + 1)
    hist_a = np.histogram(np.minimum(a, DAB_RANGE[1]), edges)[0] + KL_EPSILON
    hist_b = np.histogram(np.minimum(b, DAB_RANGE[1]), edges)[0] + KL_EPSILON
    p, q = hist_a / hist_a.sum(), hist_b / hist_b.sum()
    kl = float(np.sum(p * np.log(p / q)))
    iod_real, iod_virtual = float(a.sum()), float(b.sum())
    rel = (iod_virtual - iod_real) / iod_real if iod_real > 0 else math.nan
    return {"dab_pearson_r": pearson, "dab_kl": kl, "iod_real": iod_real, "iod_virtual": iod_virtual,
            "iod_rel_diff": rel}
