"""Networks of pix2pix and PyramidPix2pix (junyanz/pytorch-CycleGAN-and-pix2pix; bupt-ai-cz/BCI).

- :class:`UnetGenerator`: pix2pix's ``unet_256`` (Isola et al. 2017).
- :class:`Pix2pixResnetGenerator`: pix2pix's ``resnet_9blocks`` with a choice
  of norm and dropout (PyramidPix2pix: batch norm + dropout; with instance
  norm and no dropout it is :class:`tdkstain.models.tdkstain.ResnetGenerator`).
- :class:`PatchDiscriminator`: the 70x70 PatchGAN (``netD basic``, n_layers 3,
  4x4 convs with padding 1), any depth, batch/instance norm, optional spectral
  norm; CycleGAN's discriminators too.

Each is tested by its outputs on the reference code's weights
(``tests/test_reference_methods.py``). Constructor arguments are kept in
``init_kwargs`` (the model card of ``tdkstain.weights``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tdkstain.models.layers import norm_layer, spectral_norm_convs

__all__ = [
    "UnetGenerator",
    "Pix2pixResnetGenerator",
    "PatchDiscriminator",
]

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
