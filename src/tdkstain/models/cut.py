"""Networks of CUT and ASP (taesungp/contrastive-unpaired-translation ``networks.py`` as
lifangda01/AdaptiveSupervisedPatchNCE ships it, run with its MIST launcher).

- :class:`CUTResnetGenerator` and :class:`CUTPatchDiscriminator`, with
  anti-aliased down- and upsampling (:class:`Downsample`, :class:`Upsample`)
  and spectral norm on every conv (``--weight_norm spectral``).
- :class:`PatchSampleMLP`: CUT's ``PatchSampleF`` (``mlp_sample``): random
  patch locations, a 2-layer MLP per feature layer, ASP's L2 normalisation.

Module names follow the reference, so its checkpoints load as they are;
each network is tested by its outputs on the reference's weights.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tdkstain.models.layers import ResnetBlock, norm_layer, spectral_norm_convs

__all__ = [
    "Downsample",
    "Upsample",
    "CUTResnetGenerator",
    "CUTPatchDiscriminator",
    "PatchSampleMLP",
]

def _binomial(size: int) -> torch.Tensor:
    """CUT's ``get_filter``: the outer product of binomial row ``size`` (``[1,2,1]``, ``[1,3,3,1]``), summing to 1."""
    row = {3: [1.0, 2.0, 1.0], 4: [1.0, 3.0, 3.0, 1.0]}[size]
    a = torch.tensor(row, dtype=torch.float64)
    f = a[:, None] * a[None, :]
    return (f / f.sum()).float()


class Downsample(nn.Module):
    """CUT's anti-aliased downsampling (Zhang, ICML 2019): reflect-pad 1, per-channel 3x3 binomial blur, stride 2.

    ``(B, C, H, W)`` -> ``(B, C, ceil(H / 2), ceil(W / 2))``. The fixed filter is the
    ``filt`` buffer (``(C, 1, 3, 3)``), as in the reference's state_dict.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("filt", _binomial(3)[None, None].repeat(channels, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), self.filt, stride=2, groups=x.shape[1])


class Upsample(nn.Module):
    """CUT's anti-aliased upsampling: replicate-pad 1, per-channel transposed conv with the 4x4
    binomial filter times 4, stride 2, padding 2, then the first and last rows and columns dropped.

    ``(B, C, H, W)`` -> ``(B, C, 2H, 2W)``; ``filt`` buffer ``(C, 1, 4, 4)``.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("filt", (_binomial(4) * 4)[None, None].repeat(channels, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.conv_transpose2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), self.filt, stride=2, padding=2, groups=x.shape[1])
        return out[:, :, 1:-1, 1:-1]


class CUTResnetGenerator(nn.Module):
    """CUT's ResNet generator as ASP uses it (``resnet_6blocks``, instance norm, every conv with a bias).

    ``self.model`` (indices for n_downsampling 2, 6 blocks, ``antialias``):
    0 reflect-pad 3, 1 conv 7x7, 2 norm, 3 ReLU; per downsampling a stride-1
    conv 3x3, norm, ReLU and a :class:`Downsample` (4-7, 8-11); residual
    blocks (12-17); per upsampling an :class:`Upsample`, conv 3x3, norm, ReLU
    (18-21, 22-25); 26 reflect-pad 3, 27 conv 7x7, 28 tanh. Without
    ``antialias`` the sampling is a stride-2 conv and a transposed conv (CUT's
    ``--no_antialias --no_antialias_up``; then the layout of
    :class:`tdkstain.models.tdkstain.ResnetGenerator`). ``spectral_norm`` wraps every
    conv (ASP's ``--weight_norm spectral``). PatchNCE reads ``self.model``'s
    outputs by index (ASP: 0, 4, 8, 12, 16).

    ``(B, input_nc, H, W)`` in [-1, 1], H and W multiples of ``2**n_downsampling``
    -> ``(B, output_nc, H, W)`` in [-1, 1].
    """

    def __init__(self, input_nc: int = 3, output_nc: int = 3, ngf: int = 64, n_downsampling: int = 2, n_blocks: int = 6,
                 antialias: bool = True, spectral_norm: bool = True) -> None:
        super().__init__()
        if min(input_nc, output_nc, ngf) < 1 or n_downsampling < 1 or n_blocks < 0:
            raise ValueError(
                "CUTResnetGenerator needs input_nc, output_nc, ngf >= 1, n_downsampling >= 1, n_blocks >= 0; "
                f"got {input_nc}, {output_nc}, {ngf}, {n_downsampling}, {n_blocks}"
            )
        self.init_kwargs: dict[str, Any] = dict(input_nc=input_nc, output_nc=output_nc, ngf=ngf, n_downsampling=n_downsampling,
                                                n_blocks=n_blocks, antialias=antialias, spectral_norm=spectral_norm)
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(input_nc, ngf, 7), norm_layer("instance", ngf), nn.ReLU(True)]
        for k in range(n_downsampling):
            c = ngf * 2**k
            if antialias:
                layers += [nn.Conv2d(c, 2 * c, 3, stride=1, padding=1), norm_layer("instance", 2 * c), nn.ReLU(True), Downsample(2 * c)]
            else:
                layers += [nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), norm_layer("instance", 2 * c), nn.ReLU(True)]
        layers += [ResnetBlock(ngf * 2**n_downsampling) for _ in range(n_blocks)]
        for k in range(n_downsampling, 0, -1):
            c = ngf * 2**k
            if antialias:
                layers += [Upsample(c), nn.Conv2d(c, c // 2, 3, stride=1, padding=1), norm_layer("instance", c // 2), nn.ReLU(True)]
            else:
                layers += [nn.ConvTranspose2d(c, c // 2, 3, stride=2, padding=1, output_padding=1), norm_layer("instance", c // 2), nn.ReLU(True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)
        self.size_multiple = 2**n_downsampling
        if spectral_norm:
            spectral_norm_convs(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class CUTPatchDiscriminator(nn.Module):
    """ASP's PatchGAN: CUT's ``NLayerDiscriminator`` split into ``enc`` and ``final_conv``.

    With ``antialias`` (the reference default), ``enc`` is: conv 4x4 s1 p1
    (input_nc -> ndf), LReLU 0.2, :class:`Downsample`; for n = 1 .. n_layers-1:
    conv 4x4 s1 p1 to ``ndf * min(2**n, 8)``, norm, LReLU, Downsample; conv
    4x4 s1 p1 to ``ndf * min(2**n_layers, 8)``, norm, LReLU. Without it the
    first n_layers convs have stride 2 and no Downsample follows (CUT's
    ``--no_antialias``). ``final_conv``: conv 4x4 s1 p1 to 1 channel (raw
    scores). Every conv has a bias (instance norm); ``spectral_norm`` wraps
    each (ASP's MIST setting). ``(B, input_nc, H, W)`` -> ``(B, 1, h, w)``;
    ASP at n_layers 5 maps 128 px to 2x2.
    """

    def __init__(self, input_nc: int = 3, ndf: int = 64, n_layers: int = 5, norm: str = "instance",
                 antialias: bool = True, spectral_norm: bool = True) -> None:
        super().__init__()
        self.init_kwargs: dict[str, Any] = dict(input_nc=input_nc, ndf=ndf, n_layers=n_layers, norm=norm,
                                                antialias=antialias, spectral_norm=spectral_norm)
        bias = norm == "instance"

        def strided(c_in: int, c_out: int, use_bias: bool, with_norm: bool) -> list[nn.Module]:
            conv = nn.Conv2d(c_in, c_out, 4, stride=1 if antialias else 2, padding=1, bias=use_bias)
            tail = [norm_layer(norm, c_out)] if with_norm else []
            return [conv, *tail, nn.LeakyReLU(0.2, True)] + ([Downsample(c_out)] if antialias else [])

        layers = strided(input_nc, ndf, True, False)
        mult = 1
        for n in range(1, n_layers):
            prev, mult = mult, min(2**n, 8)
            layers += strided(ndf * prev, ndf * mult, bias, True)
        prev, mult = mult, min(2**n_layers, 8)
        layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride=1, padding=1, bias=bias), norm_layer(norm, ndf * mult), nn.LeakyReLU(0.2, True)]
        self.enc = nn.Sequential(*layers)
        self.final_conv = nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1)
        if spectral_norm:
            spectral_norm_convs(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.final_conv(self.enc(x))


class PatchSampleMLP(nn.Module):
    """CUT's ``PatchSampleF`` with ``use_mlp`` (``mlp_sample``), as ASP ships it: per layer
    ``mlp_<i>`` = Linear(C, nc), ReLU, Linear(nc, nc).

    ``forward(features, num_patches, patch_ids)``: for each ``(B, C, H, W)``
    feature map, take the same ``min(num_patches, H*W)`` random locations in
    every sample (new ones from ``torch.randperm`` when ``patch_ids`` is None),
    project them and L2-normalise as ASP's ``Normalize`` does:
    ``x / ||x + 1e-7||`` (the constant is added to every entry before the
    norm; CUT divides by ``||x|| + 1e-7`` instead). Returns
    ``(projected, patch_ids)``; ``projected[l]`` is ``(B * P, nc)``, rows
    ordered by sample then patch.
    """

    def __init__(self, channels: list[int], nc: int = 256) -> None:
        super().__init__()
        self.init_kwargs: dict[str, Any] = dict(channels=list(channels), nc=nc)
        self.num_layers = len(channels)
        for i, c in enumerate(channels):
            self.add_module(f"mlp_{i}", nn.Sequential(nn.Linear(c, nc), nn.ReLU(), nn.Linear(nc, nc)))

    def forward(self, features: list[torch.Tensor], num_patches: int, patch_ids: list[torch.Tensor] | None = None):
        out, ids = [], []
        for i, feature in enumerate(features):
            b, c, h, w = feature.shape
            flat = feature.permute(0, 2, 3, 1).reshape(b, h * w, c)
            if patch_ids is None:
                pid = torch.randperm(h * w, device=feature.device)[: min(num_patches, h * w)]
            else:
                pid = patch_ids[i]
            sample = getattr(self, f"mlp_{i}")(flat[:, pid, :].reshape(-1, c))
            out.append(sample / torch.linalg.vector_norm(sample + 1e-7, dim=1, keepdim=True))
            ids.append(pid)
        return out, ids
