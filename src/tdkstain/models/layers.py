"""Building blocks shared by the networks of every method: norms, the residual block, initialisation, spectral norm.

Tensors are ``(B, C, H, W)``; nothing here depends on a method. This module
imports nothing else from tdkstain.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = [
    "PADDING_TYPES",
    "ResnetBlock",
    "instance_norm",
    "norm_layer",
    "init_weights",
    "xavier_init",
    "spectral_norm_convs",
    "sequential_features",
    "count_parameters",
]


PADDING_TYPES = ("reflect", "replicate", "zero")


def instance_norm(channels: int) -> nn.Module:
    """The release's ``InstanceNorm2d``: no affine parameters, no running statistics."""
    # The release's "instance" norm: no affine parameters, no running
    # statistics, so train and eval modes compute the same function and a
    # batch never mixes its samples (G(x) and G(M*x) may share one batch).
    return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)


def _pad_layers(padding_type: str, amount: int) -> tuple[list[nn.Module], int]:
    """Explicit padding layer(s) and the conv's own zero padding, pix2pix style.

    "zero" pads inside the conv and adds no layer, which shifts the Sequential
    indices exactly as the release's code does for that option.
    """
    if padding_type == "reflect":
        return [nn.ReflectionPad2d(amount)], 0
    if padding_type == "replicate":
        return [nn.ReplicationPad2d(amount)], 0
    if padding_type == "zero":
        return [], amount
    raise ValueError(f"padding_type must be one of {PADDING_TYPES}, got {padding_type!r}")


class ResnetBlock(nn.Module):
    """Residual block: pad, conv3x3, norm, ReLU, pad, conv3x3, norm, plus skip.

    Keys read ``conv_block.1.weight`` / ``conv_block.5.weight`` with reflect
    padding, as in the release (no dropout).
    """

    def __init__(self, channels: int, padding_type: str = "reflect") -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for second in (False, True):
            pads, p = _pad_layers(padding_type, 1)
            layers += pads
            layers += [nn.Conv2d(channels, channels, kernel_size=3, padding=p, bias=True), instance_norm(channels)]
            if not second:
                layers.append(nn.ReLU(inplace=True))
        self.conv_block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


def norm_layer(kind: str, channels: int) -> nn.Module:
    """pix2pix's ``get_norm_layer``: batch (affine, running stats) or instance (neither)."""
    if kind == "batch":
        return nn.BatchNorm2d(channels, affine=True, track_running_stats=True)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
    raise ValueError(f"norm must be 'batch' or 'instance', got {kind!r}")


def init_weights(module: nn.Module, std: float = 0.02, *, zero_bias: bool = True) -> nn.Module:
    """The release's "normal" init, in place: conv / linear weights N(0, std), biases 0.

    ``zero_bias`` False leaves conv / linear biases as PyTorch initialised them
    (pix2pixHD's ``weights_init``). Norm layers with affine parameters (none
    in these networks) get weight N(1, std) and bias 0, as pix2pix does for
    batch norm. Returns ``module``.
    """
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None and zero_bias:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d, nn.GroupNorm)) and m.weight is not None:
            nn.init.normal_(m.weight, 1.0, std)
            nn.init.zeros_(m.bias)
    return module


def xavier_init(module: nn.Module, gain: float = 0.02) -> nn.Module:
    """CUT/ASP's default init (``init_type xavier``, gain 0.02): conv/linear weights xavier-normal, biases 0;
    batch-norm weights N(1, 0.02). Returns ``module``."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            # Under spectral norm the trained tensor is ``weight_orig`` (the reference inits it through ``weight.data``).
            weight = m.weight_orig if hasattr(m, "weight_orig") else m.weight
            nn.init.xavier_normal_(weight.data, gain=gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, gain)
            nn.init.zeros_(m.bias)
    return module


def spectral_norm_convs(module: nn.Module) -> nn.Module:
    """Wrap every ``Conv2d`` / ``ConvTranspose2d`` under ``module`` in spectral norm, in place; returns ``module``.

    PyTorch's hook-based ``torch.nn.utils.spectral_norm`` (one power iteration
    per training forward, none in eval mode), as CUT/ASP and pix2pix apply it.
    """
    for m in list(module.modules()):
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) and not hasattr(m, "weight_orig"):
            nn.utils.spectral_norm(m)
    return module


def sequential_features(model: nn.Sequential, layer_ids: list[int], x: torch.Tensor) -> list[torch.Tensor]:
    """Outputs of ``model[i]`` for each ``i`` in ``layer_ids`` (CUT's ``encode_only``), stopping after the last.

    A captured output that the next layer would overwrite in place (an
    in-place ReLU) is cloned first.
    """
    wanted = sorted(set(layer_ids))
    if not wanted or wanted[0] < 0 or wanted[-1] >= len(model):
        raise ValueError(f"layer ids {layer_ids} outside 0..{len(model) - 1}")
    found: dict[int, torch.Tensor] = {}
    layers = list(model)
    for i, layer in enumerate(layers):
        x = layer(x)
        if i in wanted:
            following = layers[i + 1] if i + 1 < len(layers) else None
            inplace = isinstance(following, (nn.ReLU, nn.LeakyReLU)) and following.inplace
            found[i] = x.clone() if inplace else x
            if i == wanted[-1]:
                break
    return [found[i] for i in layer_ids]


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
