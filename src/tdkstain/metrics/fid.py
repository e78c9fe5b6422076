"""FID and KID between a set of real and a set of generated IHC images, streamed.

Definitions (as pytorch-fid and torch-fidelity compute them, so numbers are
comparable with the literature when the features come from
:class:`~tdkstain.metrics.inception.InceptionFeatures`):

- **FID** (Heusel et al. 2017): ``|mu_a - mu_b|^2 + tr(S_a) + tr(S_b) -
  2 tr(sqrtm(S_a S_b))`` with the features' mean and unbiased covariance
  (``np.cov``, ``N - 1``). The trace term is computed by default as the nuclear
  norm of ``F_a^T F_b`` for PSD factors ``S = F F^T`` (same value as
  pytorch-fid's ``scipy.linalg.sqrtm``, but accurate for the singular
  covariances of sets smaller than 2048 images); ``method="sqrtm"`` runs
  pytorch-fid's computation verbatim (with its ``eps = 1e-6`` fallback).
- **KID** (Binkowski et al. 2018): the unbiased MMD^2 estimator with the cubic
  polynomial kernel ``k(x, y) = (x.y / d + 1)^3``, averaged over ``subsets``
  random subsets of ``subset_size`` features drawn without replacement from
  each set; reported as mean and standard deviation (``ddof = 0``) over the
  subsets. Subsets are drawn with ``numpy.random.RandomState(seed).choice``
  in torch-fidelity's order (set a, then set b, per subset), so
  ``seed=2020`` reproduces torch-fidelity's default draw exactly.

Memory: :class:`FeatureStats` keeps a running mean and covariance (float64,
``D*D*8`` bytes = 32 MiB at D = 2048) and, for KID and the exact FID of small
sets, every feature vector in float64 (``N*D*8`` bytes: 600 images -> 9.8 MB;
``keep_features=False`` drops them). Images themselves are never held beyond
one batch.
"""

from __future__ import annotations

import os
import warnings
from typing import Iterable

import numpy as np
import scipy.linalg

from tdkstain.plumbing.errors import TdkstainError

# Fewest images per set FID and KID are defined on: a covariance (FID) and an
# unbiased MMD over pairs of distinct images (KID) need two. Callers with fewer
# report the metrics as unavailable (tdkstain.evaluation.runner does).
MIN_IMAGES = 2

__all__ = [
    "MIN_IMAGES",
    "FeatureStats",
    "FidKidAccumulator",
    "fid_kid",
    "frechet_distance",
    "kernel_inception_distance",
    "trace_sqrt_product",
    "polynomial_mmd2_unbiased",
]


class FeatureStats:
    """Running mean and covariance of feature vectors, fed in batches.

    Batches are merged with Chan et al.'s parallel update of the mean and the
    sum of squared deviations (stable in float64, unlike ``sum(x x^T) - n mu mu^T``).

    Attributes:
        n: number of vectors seen.
        mean: ``(D,)`` float64.
        cov: ``(D, D)`` float64 unbiased covariance (divides by ``n - 1``), as ``np.cov``.
        features: ``(n, D)`` float64, every vector seen (for KID and the exact
            FID cross term of small sets), when ``keep_features``: ``n * D * 8``
            bytes (600 Inception vectors: 9.8 MB).
    """

    def __init__(self, dim: int | None = None, keep_features: bool = True):
        self.dim = dim
        self.keep_features = keep_features
        self.n = 0
        self._mean: np.ndarray | None = None
        self._m2: np.ndarray | None = None
        self._chunks: list[np.ndarray] = []

    def update(self, features: np.ndarray) -> None:
        """Add ``(N, D)`` feature vectors (any float dtype; accumulated in float64)."""
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or (self.dim is not None and x.shape[1] != self.dim):
            raise TdkstainError(f"FeatureStats.update expects (N, {self.dim or 'D'}) features, got shape {x.shape}")
        if len(x) == 0:
            return
        if self.dim is None:
            self.dim = x.shape[1]
        batch_mean = x.mean(axis=0)
        centred = x - batch_mean
        batch_m2 = centred.T @ centred
        if self.n == 0:
            self._mean, self._m2 = batch_mean, batch_m2
        else:
            total = self.n + len(x)
            delta = batch_mean - self._mean
            self._mean = self._mean + delta * (len(x) / total)
            self._m2 = self._m2 + batch_m2 + np.outer(delta, delta) * (self.n * len(x) / total)
        self.n += len(x)
        if self.keep_features:
            self._chunks.append(x)

    @property
    def mean(self) -> np.ndarray:
        if self.n == 0:
            raise TdkstainError("no features were added: the image set is empty")
        return self._mean

    @property
    def cov(self) -> np.ndarray:
        if self.n < MIN_IMAGES:
            raise TdkstainError(
                f"FID needs at least {MIN_IMAGES} images per set (the covariance of {self.n} image(s) is undefined), "
                f"got {self.n}"
            )
        return self._m2 / (self.n - 1)

    @property
    def features(self) -> np.ndarray:
        if not self.keep_features:
            raise TdkstainError("these FeatureStats were created with keep_features=False")
        if not self._chunks:
            return np.zeros((0, self.dim or 0), dtype=np.float64)
        if len(self._chunks) > 1:
            self._chunks = [np.concatenate(self._chunks)]
        return self._chunks[0]


def _psd_factor(matrix: np.ndarray) -> np.ndarray:
    """``F`` with ``F @ F.T == matrix`` for a symmetric PSD matrix, numerically null directions dropped.

    From ``eigh``: ``F = V_k diag(sqrt(w_k))`` over the eigenvalues above
    numpy's ``matrix_rank`` tolerance (``max(w) * D * machine eps``); the
    others are rounding noise of a singular covariance, whose square roots
    would otherwise add up to a visible error.
    """
    w, v = np.linalg.eigh((matrix + matrix.T) / 2)
    keep = w > w.max(initial=0.0) * matrix.shape[0] * np.finfo(np.float64).eps
    return v[:, keep] * np.sqrt(w[keep])


def trace_sqrt_product(sigma_a: np.ndarray, sigma_b: np.ndarray, method: str = "eigh", eps: float = 1e-6) -> float:
    """``tr(sqrtm(S_a S_b))`` for covariance matrices, the cross term of the Fréchet distance.

    ``method="eigh"`` (default): with PSD factors ``S_a = F_a F_a^T`` and
    ``S_b = F_b F_b^T`` from symmetric eigendecompositions, the eigenvalues of
    ``S_a S_b`` are the squared singular values of ``F_a^T F_b``, so the trace
    of the square root is that matrix's nuclear norm. Same value as
    pytorch-fid's, computed with symmetric eigensolvers and an SVD, which stay
    accurate when the covariances are singular (always, with fewer images than
    the 2048 feature dimensions): there ``scipy.linalg.sqrtm`` errs by ~1e-4
    absolute, enough to give a set a non-zero FID against itself.

    ``method="sqrtm"``: pytorch-fid's computation verbatim: ``scipy.linalg.sqrtm``
    of the product; if not finite, retried with ``eps * I`` added to both
    covariances; a complex root is accepted only if its diagonal's imaginary
    part is below 1e-3.
    """
    if method == "eigh":
        factor_a = _psd_factor(sigma_a)
        factor_b = _psd_factor(sigma_b)
        return float(np.linalg.svd(factor_a.T @ factor_b, compute_uv=False).sum())
    if method != "sqrtm":
        raise TdkstainError(f"unknown Fréchet distance method {method!r}; use 'eigh' or 'sqrtm'")
    with warnings.catch_warnings():
        # sqrtm warns on singular products; the finite check decides, as in pytorch-fid.
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(sigma_a @ sigma_b)
        if not np.isfinite(covmean).all():
            offset = np.eye(sigma_a.shape[0]) * eps
            covmean = scipy.linalg.sqrtm((sigma_a + offset) @ (sigma_b + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            worst = float(np.max(np.abs(covmean.imag)))
            raise TdkstainError(f"FID: the covariance product's square root has an imaginary component {worst:.3g}")
        covmean = covmean.real
    return float(np.trace(covmean))


def _factor(stats: FeatureStats) -> np.ndarray:
    """``(D, k)`` ``F`` with ``F @ F.T == stats.cov``: from the centred samples when there are at most D
    of them (exact, and cheap: ``k = n``), else from an eigendecomposition."""
    if stats.keep_features and stats.n <= stats.dim:
        return (stats.features - stats.mean).T / np.sqrt(stats.n - 1)
    return _psd_factor(stats.cov)


def frechet_distance(stats_a: FeatureStats, stats_b: FeatureStats, method: str = "eigh", eps: float = 1e-6) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (FID for Inception pool3 features).

    ``|mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr(sqrtm(S_a S_b))``; see
    :func:`trace_sqrt_product` for the two ways of computing the last term
    (``"sqrtm"`` is pytorch-fid's, ``"eigh"`` the same quantity, more
    accurate). With ``"eigh"`` and sets of at most D vectors whose features
    were kept, the factors are the centred samples themselves
    (``S = A^T A / (n - 1)``), so the cross term is the nuclear norm of an
    ``n_a x n_b`` matrix: exact and fast.
    """
    mu_a, mu_b = stats_a.mean, stats_b.mean
    if mu_a.shape != mu_b.shape:
        raise TdkstainError(f"feature dimensions differ: {mu_a.shape} vs {mu_b.shape}")
    sigma_a, sigma_b = stats_a.cov, stats_b.cov
    diff = mu_a - mu_b
    if method == "eigh":
        factor_a, factor_b = _factor(stats_a), _factor(stats_b)
        cross = float(np.linalg.svd(factor_a.T @ factor_b, compute_uv=False).sum())
    else:
        cross = trace_sqrt_product(sigma_a, sigma_b, method=method, eps=eps)
    return float(diff @ diff + np.trace(sigma_a) + np.trace(sigma_b) - 2.0 * cross)


def polynomial_mmd2_unbiased(
    x: np.ndarray, y: np.ndarray, degree: int = 3, gamma: float | None = None, coef0: float = 1.0
) -> float:
    """Unbiased MMD^2 of two equal-size samples under ``k(a, b) = (gamma a.b + coef0)^degree``.

    ``sum_{i != j} k(x_i, x_j) / (m (m - 1)) + sum_{i != j} k(y_i, y_j) / (m (m - 1))
    - 2 sum_{i, j} k(x_i, y_j) / m^2`` (Binkowski et al. 2018; torch-fidelity's
    ``mmd_est="unbiased"``). ``gamma`` defaults to ``1 / D``. Computed in float64.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    m = len(x)
    if len(y) != m or m < MIN_IMAGES:
        raise TdkstainError(
            f"KID (MMD) needs two samples of the same size, at least {MIN_IMAGES} each, got {len(x)} and {len(y)}"
        )
    if gamma is None:
        gamma = 1.0 / x.shape[1]
    k_xx = (x @ x.T * gamma + coef0) ** degree
    k_yy = (y @ y.T * gamma + coef0) ** degree
    k_xy = (x @ y.T * gamma + coef0) ** degree
    sum_xx = k_xx.sum() - np.trace(k_xx)
    sum_yy = k_yy.sum() - np.trace(k_yy)
    return float((sum_xx + sum_yy) / (m * (m - 1)) - 2.0 * k_xy.sum() / (m * m))


def kernel_inception_distance(
    feats_a: np.ndarray,
    feats_b: np.ndarray,
    subsets: int = 100,
    subset_size: int = 1000,
    degree: int = 3,
    gamma: float | None = None,
    coef0: float = 1.0,
    seed: int = 0,
) -> tuple[float, float]:
    """KID: mean and standard deviation of the unbiased polynomial MMD^2 over random subsets.

    ``feats_a``, ``feats_b``: ``(N_a, D)``, ``(N_b, D)`` features. Each of the
    ``subsets`` draws takes ``subset_size`` rows of each set without replacement
    (``RandomState(seed).choice``; a then b). ``subset_size`` larger than either
    set is an error (pass ``min(1000, N)`` for small sets, and report it).
    """
    feats_a = np.asarray(feats_a)
    feats_b = np.asarray(feats_b)
    if subset_size > len(feats_a) or subset_size > len(feats_b):
        raise TdkstainError(
            f"KID subset size {subset_size} exceeds the number of images ({len(feats_a)} real, {len(feats_b)} generated); "
            "use a smaller kid subset size"
        )
    if subsets < 1:
        raise TdkstainError(f"KID needs at least one subset, got {subsets}")
    rng = np.random.RandomState(seed)
    mmds = np.empty(subsets, dtype=np.float64)
    for i in range(subsets):
        a = feats_a[rng.choice(len(feats_a), subset_size, replace=False)]
        b = feats_b[rng.choice(len(feats_b), subset_size, replace=False)]
        mmds[i] = polynomial_mmd2_unbiased(a, b, degree=degree, gamma=gamma, coef0=coef0)
    return float(mmds.mean()), float(mmds.std())


class FidKidAccumulator:
    """Collects Inception features of real and generated images one image at a time, in batches.

    For an evaluation loop that reads each pair once and computes every
    metric: call :meth:`add_real` / :meth:`add_fake` with ``(H, W, 3)`` uint8
    images (any size; consecutive images of one size share a forward pass),
    then :meth:`result`. At most ``extractor.batch_size`` images per set are
    held at a time.
    """

    def __init__(self, extractor, kid_subsets: int = 100, kid_subset_size: int = 1000, seed: int = 0):
        self.extractor = extractor
        self.kid_subsets = kid_subsets
        self.kid_subset_size = kid_subset_size
        self.seed = seed
        self.real = FeatureStats()
        self.fake = FeatureStats()
        self._pending: dict[str, list[np.ndarray]] = {"real": [], "fake": []}

    def _add(self, which: str, image: np.ndarray | str | os.PathLike) -> None:
        from tdkstain.metrics.image import as_rgb_uint8

        rgb, _ = as_rgb_uint8(image, f"{which} image")
        pending = self._pending[which]
        if pending and pending[0].shape != rgb.shape:
            self._flush(which)
        pending.append(rgb)
        if len(pending) >= self.extractor.batch_size:
            self._flush(which)

    def add_real(self, image: np.ndarray | str | os.PathLike) -> None:
        self._add("real", image)

    def add_fake(self, image: np.ndarray | str | os.PathLike) -> None:
        self._add("fake", image)

    def _flush(self, which: str) -> None:
        pending = self._pending[which]
        if pending:
            stats = self.real if which == "real" else self.fake
            stats.update(self.extractor(np.stack(pending)))
            pending.clear()

    def result(self) -> dict:
        """``{"fid", "kid_mean", "kid_std", "n_real", "n_fake", "n", "kid_subsets", "kid_subset_size", "feature_extractor"}``.

        ``n`` is ``min(n_real, n_fake)``; ``kid_subset_size`` is the one used,
        ``min(requested, n_real, n_fake)``, since KID on fewer images than
        1000 is common in pathology test sets.
        """
        self._flush("real")
        self._flush("fake")
        for which, stats in (("real", self.real), ("fake", self.fake)):
            if stats.n < MIN_IMAGES:
                raise TdkstainError(f"FID/KID need at least {MIN_IMAGES} {which} images, got {stats.n}")
        subset_size = min(self.kid_subset_size, self.real.n, self.fake.n)
        kid_mean, kid_std = kernel_inception_distance(
            self.real.features, self.fake.features, subsets=self.kid_subsets, subset_size=subset_size, seed=self.seed
        )
        return {
            "fid": frechet_distance(self.real, self.fake),
            "kid_mean": kid_mean,
            "kid_std": kid_std,
            "n_real": self.real.n,
            "n_fake": self.fake.n,
            "n": min(self.real.n, self.fake.n),
            "kid_subsets": self.kid_subsets,
            "kid_subset_size": subset_size,
            "feature_extractor": getattr(self.extractor, "description", type(self.extractor).__name__),
        }


def fid_kid(
    real_images: Iterable[np.ndarray | str | os.PathLike],
    fake_images: Iterable[np.ndarray | str | os.PathLike],
    extractor,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    seed: int = 0,
) -> dict:
    """FID and KID between two image sets, streamed through ``extractor`` (an :class:`InceptionFeatures`).

    ``real_images`` / ``fake_images``: iterables (generators are fine) of
    ``(H, W, 3)`` uint8 arrays or image paths; only one batch per set is in
    memory at a time. Returns the dict of :meth:`FidKidAccumulator.result`.
    """
    acc = FidKidAccumulator(extractor, kid_subsets=kid_subsets, kid_subset_size=kid_subset_size, seed=seed)
    for image in real_images:
        acc.add_real(image)
    for image in fake_images:
        acc.add_fake(image)
    return acc.result()
