"""Perceptual distances of a generated IHC image to the real one: DISTS and LPIPS.

Both compare deep features of an ImageNet classifier, so both need weight
files that tdkstain cannot download (see :mod:`tdkstain.weights.files`):

- **DISTS** (Ding, Ma, Wang, Simoncelli, "Image Quality Assessment: Unifying
  Structure and Texture Similarity", TPAMI 2020). VGG16 whose max pools are
  replaced by L2 pooling (``sqrt(conv(x^2, g) + 1e-12)``, stride 2, ``g`` the
  normalised outer product of ``hanning(5)[1:-1] = [0.5, 1, 0.5]``, padding 1).
  Features: the input image itself (3 channels, in [0, 1]) and relu1_2,
  relu2_2, relu3_3, relu4_3, relu5_3 of the ImageNet-normalised input
  (mean 0.485/0.456/0.406, std 0.229/0.224/0.225); 3 + 64 + 128 + 256 + 512 +
  512 = 1475 channels. Per channel, with spatial means ``m``, biased
  variances ``v`` and covariance ``c`` of the two images' feature maps:
  ``S1 = (2 m_x m_y + c1) / (m_x^2 + m_y^2 + c1)`` (texture),
  ``S2 = (2 c_xy + c2) / (v_x + v_y + c2)`` (structure), ``c1 = c2 = 1e-6``;
  ``DISTS = 1 - sum_j (alpha_j S1_j + beta_j S2_j) / (sum alpha + sum beta)``
  with the published learned ``alpha``, ``beta`` (``weights.pt`` of the
  authors' ``DISTS_pytorch`` 0.1 wheel). 0 for identical images.
- **LPIPS** v0.1 (Zhang et al., "The Unreasonable Effectiveness of Deep
  Features as a Perceptual Metric", CVPR 2018). Input mapped to [-1, 1],
  then ``(x - shift) / scale`` with shift (-0.030, -0.088, -0.188) and scale
  (0.458, 0.448, 0.450); features at relu1_2 ... relu5_3 (VGG16) or relu1 ...
  relu5 (AlexNet); each unit-normalised over channels
  (``f / (sqrt(sum_c f^2) + 1e-10)``); ``LPIPS = sum_l mean_hw(sum_c w_lc
  (f0 - f1)^2)`` with the published non-negative linear weights ``w``
  (``v0.1/{vgg,alex}.pth`` of the ``lpips`` 0.1.4 wheel). 0 for identical images.

The backbones are the torchvision ImageNet checkpoints
(``vgg16-397923af.pth``, ``alexnet-owt-7be5be79.pth``), loaded with
``torch.load(weights_only=True)`` into the same layer layout, defined here.
No resizing: images are compared at their size (DISTS' reference script
resizes only on request). Without the weights the constructors raise
:class:`~tdkstain.weights.files.MetricUnavailable`; report the metric as
unavailable. ``allow_noncanonical=True`` accepts other files (tests use random
stand-ins); then ``canonical`` is False and :attr:`description` says so.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tdkstain.plumbing.errors import TdkstainError
from tdkstain.metrics.inception import images_to_tensor
from tdkstain.metrics.runtime import exact_float32
from tdkstain.plumbing.devices import resolve_device
from tdkstain.weights.files import MetricUnavailable, WeightFile, find_weights

__all__ = [
    "DISTS",
    "LPIPS",
    "MetricUnavailable",
    "alexnet_features",
    "find_weights",
    "images_to_unit_tensor",
    "vgg16_features",
]

# torchvision's VGG16 "D" configuration (Simonyan & Zisserman 2015); "M" = 2x2 max pool.
_VGG16_CONFIG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]

# Indices (in torchvision's ``features``) of the ReLUs whose outputs the metrics read.
VGG16_TAPS = (3, 8, 15, 22, 29)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
ALEXNET_TAPS = (1, 4, 7, 9, 11)  # relu1 ... relu5
VGG16_CHANNELS = (64, 128, 256, 512, 512)
ALEXNET_CHANNELS = (64, 192, 384, 256, 256)


# Input normalisations, kept as Python floats so a float64 module uses them unrounded.
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's ImageNet statistics, as DISTS uses them
IMAGENET_STD = (0.229, 0.224, 0.225)
LPIPS_SHIFT = (-0.030, -0.088, -0.188)  # lpips v0.1 ScalingLayer (Zhang et al. 2018)
LPIPS_SCALE = (0.458, 0.448, 0.450)


def _constant(values: tuple[float, float, float], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=like.dtype, device=like.device).view(1, 3, 1, 1)


def vgg16_features() -> nn.Sequential:
    """VGG16's convolutional part in torchvision's layout (indices 0..30, so ``features.N.*`` keys load)."""
    layers: list[nn.Module] = []
    channels = 3
    for item in _VGG16_CONFIG:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(channels, item, kernel_size=3, padding=1), nn.ReLU(inplace=False)]
            channels = item
    return nn.Sequential(*layers)


def alexnet_features() -> nn.Sequential:
    """AlexNet's convolutional part in torchvision's layout (``features.0`` ... ``features.12``)."""
    return nn.Sequential(
        nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=False),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(inplace=False),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(inplace=False),
        nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(inplace=False),
        nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(inplace=False),
        nn.MaxPool2d(kernel_size=3, stride=2),
    )  # fmt: skip


def _torch_load(weight_file: WeightFile) -> dict:
    try:
        return torch.load(weight_file.path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, zip errors, refused globals
        raise TdkstainError(f"{weight_file.path}: cannot read {weight_file.spec.description}: {exc}") from None


def _load_backbone(features: nn.Sequential, weight_file: WeightFile) -> None:
    """Load a torchvision classifier checkpoint's ``features.*`` tensors (the classifier head is ignored)."""
    state = _torch_load(weight_file)
    if not isinstance(state, dict):
        raise TdkstainError(f"{weight_file.path}: expected a state dict, got {type(state).__name__}")
    prefixed = {k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")}
    wanted = features.state_dict()
    missing = sorted(set(wanted) - set(prefixed))
    bad_shapes = [k for k in wanted if k in prefixed and tuple(prefixed[k].shape) != tuple(wanted[k].shape)]
    if missing or bad_shapes:
        raise TdkstainError(
            f"{weight_file.path}: not a torchvision {weight_file.spec.name} checkpoint "
            f"(missing features.{missing[:3]}, wrong shapes features.{bad_shapes[:3]}). {weight_file.spec.how_to_get}."
        )
    features.load_state_dict({k: prefixed[k].float() for k in wanted})


def images_to_unit_tensor(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``(H, W, 3)`` / ``(N, H, W, 3)`` uint8 numpy, or an ``(N, 3, H, W)`` uint8 tensor -> ``(N, 3, H, W)`` float32 in [0, 1]."""
    return images_to_tensor(images).float() / 255.0


class _PerceptualMetric(nn.Module):
    """Shared plumbing: device, canonical flag, and a numpy entry point."""

    name = "perceptual"

    def __init__(self, weight_files: list[WeightFile], device: str | torch.device):
        super().__init__()
        self.weight_files = weight_files
        self.canonical = all(w.canonical for w in weight_files)
        self._device = resolve_device(device)

    @property
    def description(self) -> str:
        files = ", ".join(f"{w.path.name} (sha256 {w.sha256[:12]}...)" for w in self.weight_files)
        label = "" if self.canonical else " NON-CANONICAL stand-in weights: numbers are not comparable with published ones;"
        return f"{self.name}:{label} {files}"

    # Pixels per forward pass in score_images: 2 tiles of 1024 x 1024. VGG16's first block holds
    # 64 float32 channels per pixel for both images (~1 GB per 1024^2 pair, plus temporaries).
    max_pixels_per_batch = 2 * 1024 * 1024

    @torch.inference_mode()
    def score_images(self, real: np.ndarray | torch.Tensor, fake: np.ndarray | torch.Tensor) -> np.ndarray:
        """Distances of ``fake`` to ``real``, uint8 images as in :func:`images_to_unit_tensor`: ``(N,)`` float64.

        Runs in chunks of at most :attr:`max_pixels_per_batch` pixels, so a
        batch of large tiles does not exhaust GPU (or host) memory.
        """
        x_all = images_to_unit_tensor(real)
        y_all = images_to_unit_tensor(fake)
        if x_all.shape != y_all.shape:
            raise TdkstainError(f"{self.name}: image shapes differ: {tuple(x_all.shape)} vs {tuple(y_all.shape)}")
        step = max(1, self.max_pixels_per_batch // (x_all.shape[2] * x_all.shape[3]))
        out = []
        with exact_float32():
            for start in range(0, x_all.shape[0], step):
                x = x_all[start : start + step].to(self._device)
                y = y_all[start : start + step].to(self._device)
                out.append(self(x, y).double().cpu().numpy())
        return np.concatenate(out)


def _check_pair(name: str, x: torch.Tensor, y: torch.Tensor) -> None:
    if x.shape != y.shape or x.ndim != 4 or x.shape[1] != 3:
        raise TdkstainError(f"{name} expects two (B, 3, H, W) tensors of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")


class L2Pooling(nn.Module):
    """DISTS' L2 pooling: ``sqrt(conv(x^2, g, stride 2, padding 1) + 1e-12)`` per channel, ``g`` = normalised 3x3 Hanning.

    ``g`` is the outer product of ``hanning(5)[1:-1] = [0.5, 1, 0.5]`` divided
    by its sum (Ding et al. 2020; DISTS_pytorch). Channels are folded into the
    batch for one single-channel convolution: a grouped (depthwise)
    convolution gives the same numbers but is ~100x slower in float64 on CPU.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        window = torch.tensor([0.5, 1.0, 0.5], dtype=x.dtype, device=x.device)
        kernel = (window[:, None] * window[None, :] / 4.0).view(1, 1, 3, 3)
        b, c, h, w = x.shape
        pooled = F.conv2d((x * x).reshape(b * c, 1, h, w), kernel, stride=2, padding=1)
        return (pooled.reshape(b, c, pooled.shape[2], pooled.shape[3]) + 1e-12).sqrt()


class DISTS(_PerceptualMetric):
    """DISTS distance (Ding et al. 2020) with the published alpha/beta on ImageNet VGG16.

    Args:
        vgg16_weights: torchvision ``vgg16-397923af.pth`` (or a folder with it); ``None`` searches
            ``$TDKSTAIN_WEIGHTS``, ``~/.cache/tdkstain/weights`` and the torch hub cache.
        alpha_beta: DISTS ``weights.pt`` (``{"alpha", "beta"}``, each ``(1, 1475, 1, 1)``);
            ``None`` also looks in the installed ``DISTS_pytorch`` wheel.
        allow_noncanonical: accept files whose sha256 differs from the published ones (tests).
        device: where to run (``"auto"``: GPU when present).

    ``forward(x, y)``: two ``(B, 3, H, W)`` float tensors in [0, 1] (H, W >= 32)
    -> ``(B,)`` distances, 0 for identical images. :meth:`score_images` takes uint8 images.
    """

    name = "DISTS"
    CHANNELS = (3, 64, 128, 256, 512, 512)

    def __init__(
        self,
        vgg16_weights: str | os.PathLike | None = None,
        alpha_beta: str | os.PathLike | None = None,
        *,
        allow_noncanonical: bool = False,
        device: str | torch.device = "auto",
    ):
        vgg_file = find_weights("vgg16", vgg16_weights, allow_noncanonical=allow_noncanonical)
        ab_file = find_weights("dists", alpha_beta, allow_noncanonical=allow_noncanonical)
        super().__init__([vgg_file, ab_file], device)
        features = vgg16_features()
        _load_backbone(features, vgg_file)
        # DISTS replaces VGG's max pools (indices 4, 9, 16, 23) by L2 pooling and drops the last one.
        self.stages = nn.ModuleList(
            [
                features[0:4],
                nn.Sequential(L2Pooling(64), *features[5:9]),
                nn.Sequential(L2Pooling(128), *features[10:16]),
                nn.Sequential(L2Pooling(256), *features[17:23]),
                nn.Sequential(L2Pooling(512), *features[24:30]),
            ]
        )
        weights = _torch_load(ab_file)
        total = sum(self.CHANNELS)
        try:
            alpha, beta = weights["alpha"], weights["beta"]
            alpha, beta = alpha.reshape(total).float(), beta.reshape(total).float()
        except (KeyError, TypeError, RuntimeError, AttributeError):
            raise TdkstainError(f"{ab_file.path}: expected {{'alpha', 'beta'}} tensors of {total} values (DISTS weights.pt)") from None
        self.register_buffer("alpha", alpha)
        self.register_buffer("beta", beta)
        self.requires_grad_(False)
        self.eval().to(self._device)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The six feature maps DISTS compares: the image, then relu1_2 ... relu5_3 (L2-pooled VGG16)."""
        out = [x]
        h = (x - _constant(IMAGENET_MEAN, x)) / _constant(IMAGENET_STD, x)
        for stage in self.stages:
            h = stage(h)
            out.append(h)
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        _check_pair("DISTS", x, y)
        c1 = c2 = 1e-6
        batch = x.shape[0]
        weight_sum = self.alpha.sum() + self.beta.sum()
        alphas = torch.split(self.alpha.to(x.dtype) / weight_sum, self.CHANNELS)
        betas = torch.split(self.beta.to(x.dtype) / weight_sum, self.CHANNELS)
        similarity = torch.zeros(batch, dtype=x.dtype, device=x.device)
        # Both images go through VGG as one batch; each level's statistics are taken before the
        # next stage runs, so only one level of feature maps is alive at a time.
        level = torch.cat([x, y])
        h = (level - _constant(IMAGENET_MEAN, x)) / _constant(IMAGENET_STD, x)
        for k in range(len(self.CHANNELS)):
            if k > 0:
                h = self.stages[k - 1](h)
                level = h
            fx, fy = level[:batch], level[batch:]
            mx, my = fx.mean(dim=(2, 3)), fy.mean(dim=(2, 3))
            vx = ((fx - mx[..., None, None]) ** 2).mean(dim=(2, 3))
            vy = ((fy - my[..., None, None]) ** 2).mean(dim=(2, 3))
            cxy = (fx * fy).mean(dim=(2, 3)) - mx * my
            texture = (2 * mx * my + c1) / (mx**2 + my**2 + c1)
            structure = (2 * cxy + c2) / (vx + vy + c2)
            similarity = similarity + (texture * alphas[k]).sum(dim=1) + (structure * betas[k]).sum(dim=1)
        return 1 - similarity


class LPIPS(_PerceptualMetric):
    """LPIPS v0.1 distance (Zhang et al. 2018) on an ImageNet VGG16 or AlexNet.

    Args:
        backbone: ``"vgg"`` (VGG16; the variant usually reported for image translation) or ``"alex"``.
        backbone_weights: torchvision ``vgg16-397923af.pth`` / ``alexnet-owt-7be5be79.pth``; ``None`` searches.
        linear_weights: LPIPS ``v0.1/vgg.pth`` / ``alex.pth``; ``None`` also looks in the installed ``lpips`` wheel.
        allow_noncanonical, device: as for :class:`DISTS`.

    ``forward(x, y)``: two ``(B, 3, H, W)`` float tensors in [0, 1] -> ``(B,)``.
    """

    def __init__(
        self,
        backbone: str = "vgg",
        backbone_weights: str | os.PathLike | None = None,
        linear_weights: str | os.PathLike | None = None,
        *,
        allow_noncanonical: bool = False,
        device: str | torch.device = "auto",
    ):
        if backbone not in ("vgg", "alex"):
            raise TdkstainError(f"LPIPS backbone must be 'vgg' or 'alex', got {backbone!r}")
        backbone_file = find_weights("vgg16" if backbone == "vgg" else "alexnet", backbone_weights, allow_noncanonical=allow_noncanonical)
        linear_file = find_weights(f"lpips_{backbone}", linear_weights, allow_noncanonical=allow_noncanonical)
        super().__init__([backbone_file, linear_file], device)
        self.name = f"LPIPS-{backbone}"
        self.backbone = backbone
        features = vgg16_features() if backbone == "vgg" else alexnet_features()
        _load_backbone(features, backbone_file)
        taps = VGG16_TAPS if backbone == "vgg" else ALEXNET_TAPS
        channels = VGG16_CHANNELS if backbone == "vgg" else ALEXNET_CHANNELS
        starts = (0,) + tuple(t + 1 for t in taps[:-1])
        self.slices = nn.ModuleList([features[start : stop + 1] for start, stop in zip(starts, taps)])
        state = _torch_load(linear_file)
        linear = []
        for k, c in enumerate(channels):
            key = f"lin{k}.model.1.weight"  # lpips' NetLinLayer: Dropout, then a 1x1 conv without bias
            if not isinstance(state, dict) or key not in state or tuple(state[key].shape) != (1, c, 1, 1):
                raise TdkstainError(f"{linear_file.path}: expected {key} of shape (1, {c}, 1, 1) (lpips v0.1 {backbone}.pth)")
            linear.append(nn.Parameter(state[key].float().reshape(c), requires_grad=False))
        self.linear = nn.ParameterList(linear)
        self.requires_grad_(False)
        self.eval().to(self._device)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The five backbone activations LPIPS compares, for ``x`` in [0, 1]."""
        h = ((2 * x - 1) - _constant(LPIPS_SHIFT, x)) / _constant(LPIPS_SCALE, x)
        out = []
        for block in self.slices:
            h = block(h)
            out.append(h)
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        _check_pair(self.name, x, y)
        batch = x.shape[0]
        distance = torch.zeros(batch, dtype=x.dtype, device=x.device)
        # Both images through the backbone as one batch, one level alive at a time.
        h = ((2 * torch.cat([x, y]) - 1) - _constant(LPIPS_SHIFT, x)) / _constant(LPIPS_SCALE, x)
        for block, weight in zip(self.slices, self.linear):
            h = block(h)
            unit = h / (h.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            weighted = ((unit[:batch] - unit[batch:]) ** 2 * weight.to(x.dtype).view(1, -1, 1, 1)).sum(dim=1)
            distance = distance + weighted.mean(dim=(1, 2))
        return distance
