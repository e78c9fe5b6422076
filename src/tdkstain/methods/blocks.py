"""Networks of the comparison methods, written once and shared.

- :class:`UnetGenerator`: pix2pix's ``unet_256`` (Isola et al. 2017; layout of
  junyanz/pytorch-CycleGAN-and-pix2pix ``UnetGenerator``).
- :class:`Pix2pixResnetGenerator`: pix2pix's ``resnet_9blocks`` with a
  choice of norm and dropout (PyramidPix2pix uses batch norm + dropout;
  with instance norm and no dropout it is :class:`tdkstain.networks.ResnetGenerator`,
  which CycleGAN, pix2pixHD and ASP use directly).
- :class:`PatchDiscriminator`: the 70x70 PatchGAN (``netD basic``, n_layers 3,
  4x4 convs with padding 1), any depth, batch/instance norm, optional
  spectral norm.
- :class:`CUTResnetGenerator` and :class:`CUTPatchDiscriminator`: the
  generator and discriminator of CUT/ASP (taesungp/contrastive-unpaired-translation
  ``networks.py`` as ASP ships it), with anti-aliased down- and upsampling
  (:class:`Downsample`, :class:`Upsample`) and spectral norm on every conv
  (ASP's MIST launcher, ``--weight_norm spectral``).
- :class:`PatchSampleMLP`: CUT's ``PatchSampleF`` (``mlp_sample``): random
  patch locations + a 2-layer MLP per feature layer + ASP's L2 normalisation.
- :class:`VGG19Features`: torchvision's VGG19 ``features`` layout (so the
  ImageNet file ``vgg19-dcbb9e9d.pth`` loads), cut at pix2pixHD's relu1_1 ...
  relu5_1.
- :class:`ImagePool`: CycleGAN's history of 50 generated images, kept in
  buffers so a checkpoint carries it and resume stays exact.

Every network's constructor arguments are kept in ``init_kwargs`` (the
model card of ``tdkstain.checkpoints``). Images are ``(B, 3, H, W)`` float in
[-1, 1]. Spectral norm is PyTorch's hook-based ``torch.nn.utils.spectral_norm``,
the one the references use: the same ``weight_orig``/``weight_u``/``weight_v``
tensors, and the same power iteration in training (v from u first, then u),
which the newer parametrisation runs in the other order. Module names follow
the references wherever that costs nothing, so their checkpoints load as they
are; :meth:`UnetGenerator.reference_key_map` and
:meth:`tdkstain.networks.MultiscaleDiscriminator.reference_key_map` translate
the two layouts that differ. This module imports only ``tdkstain.networks``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tdkstain.networks import ResnetBlock

__all__ = [
    "UnetGenerator",
    "Pix2pixResnetGenerator",
    "PatchDiscriminator",
    "Downsample",
    "Upsample",
    "CUTResnetGenerator",
    "CUTPatchDiscriminator",
    "spectral_norm_convs",
    "PatchSampleMLP",
    "VGG19Features",
    "ImagePool",
    "sequential_features",
    "xavier_init",
]


def norm_layer(kind: str, channels: int) -> nn.Module:
    """pix2pix's ``get_norm_layer``: batch (affine, running stats) or instance (neither)."""
    if kind == "batch":
        return nn.BatchNorm2d(channels, affine=True, track_running_stats=True)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
    raise ValueError(f"norm must be 'batch' or 'instance', got {kind!r}")


class _UnetBlock(nn.Module):
    """One level of the U-Net: down conv, the inner levels, up conv, and the skip concatenation.

    As in pix2pix, the skip carries the input *after* the down path's
    LeakyReLU (their in-place LeakyReLU rewrites the tensor the skip
    concatenates); the outermost level has no skip and ends in tanh.
    """

    def __init__(self, outer_nc: int, inner_nc: int, input_nc: int | None, inner: nn.Module | None,
                 *, outermost: bool, norm: str, dropout: bool) -> None:
        super().__init__()
        bias = norm == "instance"  # a conv before batch norm needs no bias (pix2pix use_bias)
        input_nc = outer_nc if input_nc is None else input_nc
        self.outermost = outermost
        self.innermost = inner is None
        self.down_conv = nn.Conv2d(input_nc, inner_nc, kernel_size=4, stride=2, padding=1, bias=bias)
        self.down_norm = norm_layer(norm, inner_nc) if not (outermost or self.innermost) else None
        self.inner = inner
        up_in = inner_nc if self.innermost else inner_nc * 2
        self.up_conv = nn.ConvTranspose2d(up_in, outer_nc, kernel_size=4, stride=2, padding=1, bias=True if outermost else bias)
        self.up_norm = norm_layer(norm, outer_nc) if not outermost else None
        self.dropout = nn.Dropout(0.5) if dropout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.outermost:
            x = F.leaky_relu(x, 0.2)
        h = self.down_conv(x)
        if self.down_norm is not None:
            h = self.down_norm(h)
        if self.inner is not None:
            h = self.inner(h)
        h = self.up_conv(F.relu(h))
        if self.outermost:
            return torch.tanh(h)
        h = self.up_norm(h)
        if self.dropout is not None:
            h = self.dropout(h)
        return torch.cat([x, h], dim=1)


class UnetGenerator(nn.Module):
    """pix2pix U-Net with ``num_downs`` stride-2 levels (``unet_256``: 8; ``unet_128``: 7).

    Widths ngf, 2ngf, 4ngf, then 8ngf for the remaining levels; dropout 0.5
    on the up path of the ``num_downs - 5`` levels just outside the innermost
    one (pix2pix ``--netG unet_256``, dropout on by default for pix2pix).
    Input ``(B, input_nc, H, W)`` in [-1, 1] with H, W multiples of
    ``2**num_downs`` -> ``(B, output_nc, H, W)`` in [-1, 1].
    Paper width (ngf 64, 8 levels, batch norm): 54,413,955 parameters (the
    reference prints "[Network G] 54.414 M").

    Module names differ from the reference's nested ``model.model.1.model.3...``
    Sequentials; :meth:`reference_key_map` translates them.
    """

    def __init__(self, input_nc: int = 3, output_nc: int = 3, num_downs: int = 8, ngf: int = 64,
                 norm: str = "batch", dropout: bool = True) -> None:
        super().__init__()
        if num_downs < 5:
            raise ValueError(f"UnetGenerator needs num_downs >= 5 (3 widening levels, 1 at 8*ngf, the outermost); got {num_downs}")
        self.init_kwargs: dict[str, Any] = dict(input_nc=input_nc, output_nc=output_nc, num_downs=num_downs, ngf=ngf,
                                                norm=norm, dropout=dropout)
        block = _UnetBlock(ngf * 8, ngf * 8, None, None, outermost=False, norm=norm, dropout=False)
        for _ in range(num_downs - 5):
            block = _UnetBlock(ngf * 8, ngf * 8, None, block, outermost=False, norm=norm, dropout=dropout)
        block = _UnetBlock(ngf * 4, ngf * 8, None, block, outermost=False, norm=norm, dropout=False)
        block = _UnetBlock(ngf * 2, ngf * 4, None, block, outermost=False, norm=norm, dropout=False)
        block = _UnetBlock(ngf, ngf * 2, None, block, outermost=False, norm=norm, dropout=False)
        self.model = _UnetBlock(output_nc, ngf, input_nc, block, outermost=True, norm=norm, dropout=False)
        self.size_multiple = 2**num_downs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    @staticmethod
    def reference_key_map(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A state_dict of junyanz/pytorch-CycleGAN-and-pix2pix's ``UnetGenerator`` with this class's key names.

        Their ``UnetSkipConnectionBlock`` is a Sequential: outermost
        ``[down_conv, inner, ReLU, up_conv, Tanh]``; middle
        ``[LReLU, down_conv, down_norm, inner, ReLU, up_conv, up_norm(, Dropout)]``;
        innermost ``[LReLU, down_conv, ReLU, up_conv, up_norm]``. Keys that
        match none of these are kept as they are (a strict load then names them).
        """
        places = {
            "outermost": {"0": "down_conv", "1": "inner", "3": "up_conv"},
            "middle": {"1": "down_conv", "2": "down_norm", "3": "inner", "5": "up_conv", "6": "up_norm"},
            "innermost": {"1": "down_conv", "3": "up_conv", "4": "up_norm"},
        }
        # A block is innermost when no key goes through its position 3 into a further block.
        out: dict[str, torch.Tensor] = {}
        for key, value in state_dict.items():
            parts = key.split(".")
            if parts[:2] != ["model", "model"]:
                out[key] = value
                continue
            ours, rest, kind = ["model"], parts[2:], "outermost"
            while rest:
                index = rest[0]
                prefix = ".".join(parts[: len(parts) - len(rest)])
                if kind != "outermost":
                    deeper = any(k.startswith(f"{prefix}.3.model.") for k in state_dict)
                    kind = "middle" if deeper else "innermost"
                name = places[kind].get(index)
                if name is None:
                    ours = None
                    break
                ours.append(name)
                if name != "inner":
                    ours += rest[1:]
                    break
                rest = rest[2:]  # "<i>.model" of the inner block
                kind = "inner"
            out[".".join(ours) if ours else key] = value
        return out


class _ResnetBlock(nn.Module):
    """pix2pix residual block: reflect pad, conv3x3, norm, ReLU, [dropout 0.5], reflect pad, conv3x3, norm, plus skip."""

    def __init__(self, channels: int, norm: str, dropout: bool) -> None:
        super().__init__()
        bias = norm == "instance"
        layers: list[nn.Module] = [nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3, bias=bias), norm_layer(norm, channels), nn.ReLU(True)]
        if dropout:
            layers.append(nn.Dropout(0.5))
        layers += [nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3, bias=bias), norm_layer(norm, channels)]
        self.conv_block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class Pix2pixResnetGenerator(nn.Module):
    """pix2pix ``resnet_9blocks`` with pix2pix's norm and dropout choices.

    Layout: reflect pad 3, conv 7x7, norm, ReLU; ``n_downsampling`` x (conv
    3x3 stride 2, norm, ReLU); ``n_blocks`` residual blocks; as many x
    (transposed conv 3x3 stride 2, norm, ReLU); reflect pad 3, conv 7x7, tanh.
    Convs before a batch norm have no bias (pix2pix ``use_bias``).
    Paper width for PyramidPix2pix (ngf 64, 2 downsamplings, 9 blocks, batch
    norm): 11,383,427 parameters.
    """

    def __init__(self, input_nc: int = 3, output_nc: int = 3, ngf: int = 64, n_downsampling: int = 2,
                 n_blocks: int = 9, norm: str = "batch", dropout: bool = True) -> None:
        super().__init__()
        self.init_kwargs: dict[str, Any] = dict(input_nc=input_nc, output_nc=output_nc, ngf=ngf, n_downsampling=n_downsampling,
                                                n_blocks=n_blocks, norm=norm, dropout=dropout)
        bias = norm == "instance"
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(input_nc, ngf, 7, bias=bias), norm_layer(norm, ngf), nn.ReLU(True)]
        for k in range(n_downsampling):
            c = ngf * 2**k
            layers += [nn.Conv2d(c, 2 * c, 3, stride=2, padding=1, bias=bias), norm_layer(norm, 2 * c), nn.ReLU(True)]
        layers += [_ResnetBlock(ngf * 2**n_downsampling, norm, dropout) for _ in range(n_blocks)]
        for k in range(n_downsampling, 0, -1):
            c = ngf * 2**k
            layers += [nn.ConvTranspose2d(c, c // 2, 3, stride=2, padding=1, output_padding=1, bias=bias), norm_layer(norm, c // 2), nn.ReLU(True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)
        self.size_multiple = 2**n_downsampling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class PatchDiscriminator(nn.Module):
    """PatchGAN of pix2pix/CycleGAN (``NLayerDiscriminator``): 4x4 convs, padding 1.

    conv(input_nc -> ndf, s2), LReLU 0.2; for n = 1 .. n_layers-1: conv s2 to
    ``ndf * min(2**n, 8)``, norm, LReLU; conv s1 to ``ndf * min(2**n_layers, 8)``,
    norm, LReLU; conv s1 to 1 channel (raw scores). n_layers 3 is the 70x70
    PatchGAN: 2,768,705 parameters for pix2pix (6 input channels, batch norm;
    the reference prints "[Network D] 2.769 M"), 2,764,737 for CycleGAN (3
    channels, instance norm). ``spectral_norm`` wraps every conv
    (:func:`spectral_norm_convs`).
    Input ``(B, input_nc, H, W)`` -> ``(B, 1, h, w)``.
    """

    def __init__(self, input_nc: int = 6, ndf: int = 64, n_layers: int = 3, norm: str = "batch", spectral_norm: bool = False) -> None:
        super().__init__()
        self.init_kwargs: dict[str, Any] = dict(input_nc=input_nc, ndf=ndf, n_layers=n_layers, norm=norm, spectral_norm=spectral_norm)
        bias = norm == "instance"
        layers: list[nn.Module] = [nn.Conv2d(input_nc, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride=stride, padding=1, bias=bias), norm_layer(norm, ndf * mult), nn.LeakyReLU(0.2, True)]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1))
        self.model = nn.Sequential(*layers)
        if spectral_norm:
            spectral_norm_convs(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def spectral_norm_convs(module: nn.Module) -> nn.Module:
    """Wrap every ``Conv2d`` / ``ConvTranspose2d`` under ``module`` in spectral norm, in place; returns ``module``.

    PyTorch's hook-based ``torch.nn.utils.spectral_norm`` (one power iteration
    per training forward, none in eval mode), as CUT/ASP and pix2pix apply it.
    """
    for m in list(module.modules()):
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) and not hasattr(m, "weight_orig"):
            nn.utils.spectral_norm(m)
    return module


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
    :class:`tdkstain.networks.ResnetGenerator`). ``spectral_norm`` wraps every
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


# torchvision's VGG19 "E" configuration: conv widths, "M" = 2x2 max pool.
_VGG19 = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"]
# pix2pixHD's Vgg19 slices of ``features``: relu1_1, relu2_1, relu3_1, relu4_1, relu5_1.
VGG19_SLICES = ((0, 2), (2, 7), (7, 12), (12, 21), (21, 30))


class VGG19Features(nn.Module):
    """VGG19 ``features`` (keys ``features.<i>.weight`` as torchvision), returning the 5 pix2pixHD taps.

    Frozen (no gradients to its weights) and always in eval mode. Input:
    ``(B, 3, H, W)``, passed as given (pix2pixHD feeds its [-1, 1] images
    without ImageNet normalisation). Output: 5 feature maps, relu1_1 ... relu5_1.
    """

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = 3
        for v in _VGG19:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU(inplace=False)]
                c = v
        self.features = nn.Sequential(*layers)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "VGG19Features":
        return super().train(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for start, stop in VGG19_SLICES:
            for i in range(start, stop):
                x = self.features[i](x)
            out.append(x)
        return out


class ImagePool(nn.Module):
    """CycleGAN's image buffer (Shrivastava et al. 2017): D sees a history of generated images.

    Until ``pool_size`` images are stored, each new image is stored and
    returned; afterwards, with probability 1/2 a random stored image is
    returned and replaced by the new one, else the new one is returned.
    The stored images live in buffers (``images``, ``count``) so the
    trainer's checkpoint holds them; the coin flips come from torch's global
    generator, which the checkpoint restores too. ``(B, 3, S, S)`` in, same out.
    """

    def __init__(self, pool_size: int, channels: int, size: int) -> None:
        super().__init__()
        self.pool_size = pool_size
        self.register_buffer("images", torch.zeros(pool_size, channels, size, size))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def query(self, images: torch.Tensor) -> torch.Tensor:
        if self.pool_size == 0:
            return images
        out = []
        for image in images.detach():
            n = int(self.count)
            if n < self.pool_size:
                self.images[n] = image
                self.count += 1
                out.append(image)
            elif float(torch.rand(())) > 0.5:
                slot = int(torch.randint(0, self.pool_size, ()))
                out.append(self.images[slot].clone())
                self.images[slot] = image
            else:
                out.append(image)
        return torch.stack(out)


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
