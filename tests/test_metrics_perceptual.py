"""DISTS and LPIPS: the implementation equals a plain float64 re-computation of the published formulas.

ImageNet VGG16/AlexNet weights cannot be downloaded here, so the backbones
are random stand-ins (fixed seed) saved in torchvision's checkpoint format;
the DISTS alpha/beta and LPIPS linear weights are the published files from
the ``DISTS_pytorch`` / ``lpips`` wheels when installed (random otherwise).
Where the authors' packages are installed, they are run on the same
stand-in backbone as a second, independent reference.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tdkstain.plumbing.errors import TdkstainError
from tdkstain.metrics.perceptual import DISTS, LPIPS, alexnet_features, vgg16_features
from tdkstain.weights.files import MetricUnavailable, find_weights

VGG_CONFIG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def _stand_in(features: torch.nn.Sequential, path: Path, seed: int) -> Path:
    """A torchvision-format checkpoint (features.* plus a classifier head) with random He-initialised convolutions."""
    torch.manual_seed(seed)
    state = {}
    for key, value in features.state_dict().items():
        if key.endswith("weight"):
            fan_in = value[0].numel()
            state[f"features.{key}"] = torch.randn_like(value) * (2.0 / fan_in) ** 0.5
        else:
            state[f"features.{key}"] = torch.randn_like(value) * 0.1
    state["classifier.0.weight"] = torch.zeros(4, 4)  # ignored, as the real head is
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(3)
    out = {
        "vgg16": _stand_in(vgg16_features(), folder / "vgg16_stand_in.pth", 0),
        "alexnet": _stand_in(alexnet_features(), folder / "alexnet_stand_in.pth", 1),
    }
    for name, channels in (("dists", 1475), ("lpips_vgg", (64, 128, 256, 512, 512)), ("lpips_alex", (64, 192, 384, 256, 256))):
        try:
            out[name] = find_weights(name).path  # the published file from the wheel
        except MetricUnavailable:
            if name == "dists":
                ab = {k: torch.rand(1, channels, 1, 1) for k in ("alpha", "beta")}
            else:
                ab = {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1) for k, c in enumerate(channels)}
            out[name] = folder / f"{name}.pt"
            torch.save(ab, out[name])
    return out


def _images(seed: int, size: int = 64, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Smooth random images and a distorted copy, (B, 3, size, size) float64 in [0, 1]."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 1, (batch, 3, size // 8, size // 8))
    x = torch.from_numpy(coarse).repeat_interleave(8, dim=2).repeat_interleave(8, dim=3)
    x = (x + torch.from_numpy(rng.normal(0, 0.05, x.shape))).clamp(0, 1)
    y = (0.8 * x + 0.1 + torch.from_numpy(rng.normal(0, 0.1, x.shape))).clamp(0, 1)
    return x, y


# ---- plain float64 re-computations of the papers' formulas --------------------------------------------------


def _conv(h, state, index, **kw):
    return F.conv2d(h, state[f"features.{index}.weight"].double(), state[f"features.{index}.bias"].double(), **kw)


def _l2_pool(h: torch.Tensor) -> torch.Tensor:
    """sqrt(sum_ab g_ab h^2[2i+a-1, 2j+b-1] + 1e-12), g = [.5, 1, .5] x [.5, 1, .5] / 4, zero padding 1."""
    g = np.outer([0.5, 1.0, 0.5], [0.5, 1.0, 0.5]) / 4.0
    padded = F.pad(h * h, (1, 1, 1, 1))
    out_h, out_w = (h.shape[2] - 1) // 2 + 1, (h.shape[3] - 1) // 2 + 1
    total = torch.zeros(h.shape[0], h.shape[1], out_h, out_w, dtype=h.dtype)
    for a in range(3):
        for b in range(3):
            total += g[a, b] * padded[:, :, a : a + 2 * out_h : 2, b : b + 2 * out_w : 2]
    return (total + 1e-12).sqrt()


def _vgg_taps(x: torch.Tensor, state: dict, pool) -> list[torch.Tensor]:
    """relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 of VGG16 (torchvision layout), ``pool`` between blocks."""
    taps, h, index = [], x, 0
    for item in VGG_CONFIG:
        if item == "M":
            taps.append(h)
            if len(taps) == 5:
                break
            h = pool(h)
        else:
            h = torch.relu(_conv(h, state, index, padding=1))
            index += 1  # the ReLU
        index += 1
    return taps


def _dists_reference(x, y, vgg_state, alpha_beta) -> torch.Tensor:
    mean = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64).view(1, 3, 1, 1)
    fx = [x] + _vgg_taps((x - mean) / std, vgg_state, _l2_pool)
    fy = [y] + _vgg_taps((y - mean) / std, vgg_state, _l2_pool)
    alpha = alpha_beta["alpha"].double().flatten()
    beta = alpha_beta["beta"].double().flatten()
    weight_sum = alpha.sum() + beta.sum()
    scores = []
    for b in range(x.shape[0]):
        similarity, offset = 0.0, 0
        for a_map, b_map in zip(fx, fy):
            for c in range(a_map.shape[1]):
                u, v = a_map[b, c], b_map[b, c]
                mu, mv = u.mean(), v.mean()
                var_u, var_v = ((u - mu) ** 2).mean(), ((v - mv) ** 2).mean()
                cov = ((u - mu) * (v - mv)).mean()
                s1 = (2 * mu * mv + 1e-6) / (mu**2 + mv**2 + 1e-6)
                s2 = (2 * cov + 1e-6) / (var_u + var_v + 1e-6)
                similarity += (alpha[offset + c] * s1 + beta[offset + c] * s2) / weight_sum
            offset += a_map.shape[1]
        scores.append(1 - similarity)
    return torch.stack(scores)


def _alexnet_taps(x, state) -> list[torch.Tensor]:
    h1 = torch.relu(_conv(x, state, 0, stride=4, padding=2))
    h2 = torch.relu(_conv(F.max_pool2d(h1, 3, 2), state, 3, padding=2))
    h3 = torch.relu(_conv(F.max_pool2d(h2, 3, 2), state, 6, padding=1))
    h4 = torch.relu(_conv(h3, state, 8, padding=1))
    h5 = torch.relu(_conv(h4, state, 10, padding=1))
    return [h1, h2, h3, h4, h5]


def _lpips_reference(x, y, backbone_state, linear_state, backbone: str) -> torch.Tensor:
    shift = torch.tensor([-0.030, -0.088, -0.188], dtype=torch.float64).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450], dtype=torch.float64).view(1, 3, 1, 1)

    def taps(img):
        scaled = ((2 * img - 1) - shift) / scale
        if backbone == "vgg":
            return _vgg_taps(scaled, backbone_state, lambda h: F.max_pool2d(h, 2, 2))
        return _alexnet_taps(scaled, backbone_state)

    total = torch.zeros(x.shape[0], dtype=torch.float64)
    for k, (fx, fy) in enumerate(zip(taps(x), taps(y))):
        w = linear_state[f"lin{k}.model.1.weight"].double().flatten()
        nx = fx / (torch.sqrt((fx**2).sum(dim=1, keepdim=True)) + 1e-10)
        ny = fy / (torch.sqrt((fy**2).sum(dim=1, keepdim=True)) + 1e-10)
        per_pixel = sum(w[c] * (nx[:, c] - ny[:, c]) ** 2 for c in range(len(w)))
        total += per_pixel.mean(dim=(1, 2))
    return total


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


# ---- tests ------------------------------------------------------------------------------------------------


def test_dists_equals_float64_formula(stand_ins):
    metric = DISTS(stand_ins["vgg16"], stand_ins["dists"], allow_noncanonical=True, device="cpu")
    assert not metric.canonical and "NON-CANONICAL" in metric.description
    x, y = _images(0, size=32)
    expected = _dists_reference(x, y, _load(stand_ins["vgg16"]), _load(stand_ins["dists"]))
    assert float(expected.min()) > 0.01  # distorted copies: a distance that can be wrong
    np.testing.assert_allclose(metric.double()(x, y).numpy(), expected.numpy(), rtol=1e-9)
    np.testing.assert_allclose(metric.float()(x.float(), y.float()).numpy(), expected.numpy(), rtol=1e-4)
    assert float(metric(x.float(), x.float()).abs().max()) < 1e-5


@pytest.mark.parametrize("backbone", ["vgg", "alex"])
def test_lpips_equals_float64_formula(stand_ins, backbone):
    backbone_file = stand_ins["vgg16" if backbone == "vgg" else "alexnet"]
    linear_file = stand_ins[f"lpips_{backbone}"]
    metric = LPIPS(backbone, backbone_file, linear_file, allow_noncanonical=True, device="cpu")
    x, y = _images(1, size=32 if backbone == "vgg" else 64)
    expected = _lpips_reference(x, y, _load(backbone_file), _load(linear_file), backbone)
    assert float(expected.min()) > 0.01
    np.testing.assert_allclose(metric.double()(x, y).numpy(), expected.numpy(), rtol=1e-9)
    np.testing.assert_allclose(metric.float()(x.float(), y.float()).numpy(), expected.numpy(), rtol=1e-4)
    assert float(metric(x.float(), x.float()).abs().max()) == 0.0


def test_score_images_takes_uint8(stand_ins):
    metric = LPIPS("alex", stand_ins["alexnet"], stand_ins["lpips_alex"], allow_noncanonical=True, device="cpu")
    rng = np.random.default_rng(2)
    real = rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    fake = rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    scores = metric.score_images(real, fake)
    expected = metric(torch.from_numpy(real).permute(0, 3, 1, 2) / 255.0, torch.from_numpy(fake).permute(0, 3, 1, 2) / 255.0)
    assert scores.shape == (2,) and scores.dtype == np.float64
    np.testing.assert_allclose(scores, expected.numpy(), rtol=1e-6)
    metric.max_pixels_per_batch = 64 * 64  # one pair per forward pass: same numbers
    np.testing.assert_allclose(metric.score_images(real, fake), scores, rtol=1e-6)
    with pytest.raises(TdkstainError, match="shapes differ"):
        metric.score_images(real, fake[:, :32])


@pytest.mark.slow  # the packages build whole torchvision classifiers (138 M parameters for VGG16)
@pytest.mark.parametrize("backbone", ["vgg", "alex"])
def test_lpips_equals_the_lpips_package(stand_ins, backbone):
    lpips = pytest.importorskip("lpips")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = lpips.LPIPS(net=backbone, pnet_rand=True, verbose=False, model_path=str(stand_ins[f"lpips_{backbone}"]))
    # Put our stand-in backbone into the package's network (its slices keep torchvision's layer indices).
    state = _load(stand_ins["vgg16" if backbone == "vgg" else "alexnet"])
    for name, param in reference.net.named_parameters():
        index = name.split(".")[1]
        param.data.copy_(state[f"features.{index}.{name.split('.')[-1]}"])
    metric = LPIPS(backbone, stand_ins["vgg16" if backbone == "vgg" else "alexnet"], stand_ins[f"lpips_{backbone}"], allow_noncanonical=True, device="cpu")
    x, y = (t.float() for t in _images(3))
    with torch.no_grad():
        expected = reference(2 * x - 1, 2 * y - 1).flatten()
    np.testing.assert_allclose(metric(x, y).numpy(), expected.numpy(), rtol=1e-5)


@pytest.mark.slow
def test_dists_equals_the_dists_package(stand_ins):
    dists_pt = pytest.importorskip("DISTS_pytorch.DISTS_pt")
    import torchvision

    original_vgg16 = torchvision.models.vgg16
    state = _load(stand_ins["vgg16"])

    def vgg16_stand_in(pretrained=True, **_):
        model = original_vgg16(weights=None)
        model.features.load_state_dict({k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")})
        return model

    with mock.patch.object(dists_pt.models, "vgg16", vgg16_stand_in):
        reference = dists_pt.DISTS(load_weights=False)
    ab = _load(stand_ins["dists"])
    reference.alpha.data, reference.beta.data = ab["alpha"].float(), ab["beta"].float()
    metric = DISTS(stand_ins["vgg16"], stand_ins["dists"], allow_noncanonical=True, device="cpu")
    x, y = (t.float() for t in _images(4, size=64))
    expected = reference(x, y).detach()
    np.testing.assert_allclose(metric(x, y).numpy(), expected.numpy(), rtol=1e-5)


def test_published_small_weights_found_in_wheels():
    for name in ("dists", "lpips_vgg", "lpips_alex"):
        try:
            found = find_weights(name)
        except MetricUnavailable:
            pytest.skip(f"{name}: wheel not installed")
        assert found.canonical and found.sha256 == found.spec.sha256


def test_without_backbone_weights_the_metric_is_unavailable(tmp_path, monkeypatch, stand_ins):
    monkeypatch.setenv("TDKSTAIN_WEIGHTS", str(tmp_path / "w"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(MetricUnavailable, match=r"vgg16-397923af\.pth .* not found; looked in: .*w/vgg16-397923af\.pth.*--vgg16-weights"):
        DISTS(device="cpu")
    with pytest.raises(MetricUnavailable, match=r"alexnet-owt-7be5be79\.pth"):
        LPIPS("alex", device="cpu")
    # A stand-in is refused unless explicitly allowed, naming the file and the expected digest.
    with pytest.raises(TdkstainError, match=r"vgg16_stand_in\.pth: not the published .*397923af"):
        DISTS(stand_ins["vgg16"], stand_ins["dists"], device="cpu")
    # A file of the right name in a searched folder is found there (and flagged by its digest).
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "vgg16-397923af.pth").write_bytes(stand_ins["vgg16"].read_bytes())
    assert not find_weights("vgg16", allow_noncanonical=True).canonical
    with pytest.raises(TdkstainError, match="not a torchvision alexnet checkpoint"):
        LPIPS("alex", stand_ins["vgg16"], stand_ins["lpips_alex"], allow_noncanonical=True, device="cpu")
