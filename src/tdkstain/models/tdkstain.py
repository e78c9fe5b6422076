"""The three TDKstain networks, laid out exactly as the authors' release.

- :class:`ResnetGenerator` G: H&E -> IHC, with encoder taps ``G_en``
  (pix2pixHD's, CycleGAN's and CUT's no-antialias generator share this layout).
- :class:`MultiscaleDiscriminator` D: pix2pixHD's multi-scale PatchGAN on (H&E, IHC) pairs.
- :class:`NucleiDensityEstimator` E: encoder taps -> nuclei density map.

Layer order and module names reproduce the release's ``state_dict`` keys
(``model.<i>.<param>`` for G and E, ``layer<i>.<j>.<param>`` for D; see
``tests/fixtures/official/*.json``), so the authors' checkpoints load
without renaming. Every size is a constructor argument; the defaults are the
paper configuration (docs/method.md "Networks"): G 45.6 M, D 8.3 M, E 6.8 M
parameters. Each is tested by its outputs on the release's own weights.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tdkstain.models.layers import PADDING_TYPES, ResnetBlock, instance_norm

__all__ = [
    "DISCRIMINATOR_PADDINGS",
    "ResnetGenerator",
    "MultiscaleDiscriminator",
    "multiscale_min_input",
    "NucleiDensityEstimator",
]

# Zero padding of D's 4x4 convs: 1 in TDKstain's release (the pix2pix/CycleGAN PatchGAN it copies),
# 2 in pix2pixHD's code. docs/method.md "Networks"; docs/method.md.
DISCRIMINATOR_PADDINGS = (1, 2)


class ResnetGenerator(nn.Module):
    """ResNet generator G of the release (pix2pix ResnetGenerator with 3 downsamplings).

    Layout of ``self.model`` (an ``nn.Sequential``; indices for n_downsampling 3,
    n_blocks 9): 0 reflect-pad 3, 1 conv 7x7, 2 norm, 3 ReLU; then per
    downsampling k = 1..3 a stride-2 conv 3x3, norm, ReLU at 4-6, 7-9, 10-12
    (the ReLU outputs at 6, 9, 12 are the encoder taps ``G_en``); 13-21
    residual blocks; per upsampling a transposed conv 3x3 stride 2
    (output_padding 1), norm, ReLU at 22-30; 31 reflect-pad 3, 32 conv 7x7,
    33 tanh.

    Input and output: ``(B, input_nc, H, W)`` -> ``(B, output_nc, H, W)``,
    float in [-1, 1]; H and W multiples of ``2**n_downsampling`` give an
    output of the same size.
    """

    def __init__(
        self,
        input_nc: int = 3,
        output_nc: int = 3,
        ngf: int = 64,
        n_downsampling: int = 3,
        n_blocks: int = 9,
        padding_type: str = "reflect",
    ) -> None:
        super().__init__()
        if padding_type not in PADDING_TYPES:
            raise ValueError(f"padding_type must be one of {PADDING_TYPES}, got {padding_type!r}")
        if min(input_nc, output_nc, ngf) < 1 or n_downsampling < 1 or n_blocks < 0:
            raise ValueError(
                "ResnetGenerator needs input_nc, output_nc, ngf >= 1, n_downsampling >= 1, n_blocks >= 0; "
                f"got {input_nc}, {output_nc}, {ngf}, {n_downsampling}, {n_blocks}"
            )
        self.init_kwargs: dict[str, Any] = dict(
            input_nc=input_nc,
            output_nc=output_nc,
            ngf=ngf,
            n_downsampling=n_downsampling,
            n_blocks=n_blocks,
            padding_type=padding_type,
        )

        # The outer 7x7 convs always reflect-pad (release), whatever padding_type says.
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(input_nc, ngf, kernel_size=7, padding=0, bias=True),
            instance_norm(ngf),
            nn.ReLU(inplace=True),
        ]
        taps: list[int] = []
        channels: list[int] = []
        for k in range(n_downsampling):
            c_in, c_out = ngf * 2**k, ngf * 2 ** (k + 1)
            layers += [
                nn.Conv2d(c_in, c_out, kernel_size=3, stride=2, padding=1, bias=True),
                instance_norm(c_out),
                nn.ReLU(inplace=True),
            ]
            taps.append(len(layers) - 1)  # 6, 9, 12 for n_downsampling 3
            channels.append(c_out)
        bottleneck = ngf * 2**n_downsampling
        layers += [ResnetBlock(bottleneck, padding_type) for _ in range(n_blocks)]
        for k in range(n_downsampling, 0, -1):
            c_in, c_out = ngf * 2**k, ngf * 2 ** (k - 1)
            layers += [
                nn.ConvTranspose2d(c_in, c_out, kernel_size=3, stride=2, padding=1, output_padding=1, bias=True),
                instance_norm(c_out),
                nn.ReLU(inplace=True),
            ]
        layers += [
            nn.ReflectionPad2d(3),
            nn.Conv2d(ngf, output_nc, kernel_size=7, padding=0, bias=True),
            nn.Tanh(),
        ]
        self.model = nn.Sequential(*layers)
        self.tap_indices: tuple[int, ...] = tuple(taps)
        self._tap_channels: tuple[int, ...] = tuple(channels)

    @property
    def tap_channels(self) -> list[int]:
        """Channels of the encoder taps, e.g. ``[128, 256, 512]`` for ngf 64."""
        return list(self._tap_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, input_nc, H, W)`` in [-1, 1] -> ``(B, output_nc, H, W)`` in [-1, 1]."""
        return self.model(x)

    def forward_with_taps(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Output and encoder taps from one pass.

        Returns ``(y, taps)``: ``y`` as :meth:`forward`; ``taps[k]`` is the
        post-ReLU output of downsampling stage k+1, shape
        ``(B, tap_channels[k], H / 2**(k+1), W / 2**(k+1))``, values >= 0.
        """
        taps: list[torch.Tensor] = []
        tap_set = self.tap_indices
        for i, layer in enumerate(self.model):
            x = layer(x)
            if i in tap_set:
                taps.append(x)
        return x, taps

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Encoder taps only (runs the Sequential up to the last tap; the
        estimator step on real IHC needs nothing more). Shapes as in
        :meth:`forward_with_taps`."""
        taps: list[torch.Tensor] = []
        last = self.tap_indices[-1]
        for i, layer in enumerate(self.model):
            x = layer(x)
            if i in self.tap_indices:
                taps.append(x)
                if i == last:
                    break
        return taps


class MultiscaleDiscriminator(nn.Module):
    """Multi-scale PatchGAN discriminator D (pix2pixHD layout), keys as in the release.

    ``num_D`` PatchGANs named ``layer0`` ... ``layer{num_D-1}``, each an
    ``nn.Sequential`` (index layout for n_layers 3: 0 conv s2, 1 LReLU;
    2/5 conv s2, 3/6 norm, 4/7 LReLU; 8 conv s1, 9 norm, 10 LReLU; 11 conv s1
    to 1 channel). All convs are 4x4 and zero-pad by ``padding``:

    - 1 (the default): TDKstain's release, whose PatchGAN is the
      pix2pix/CycleGAN ``NLayerDiscriminator``; a 128 px pair gives 14x14,
      6x6 and 2x2 logits;
    - 2: pix2pixHD's own code (``padw = ceil((4 - 1) / 2)``), the pix2pixHD
      baseline; the same 128 px pair gives 19x19, 11x11 and 7x7 logits.

    The padding changes no parameter shape, only the function: weights of
    one load into the other and compute something else, so the padding is
    recorded in ``init_kwargs`` (the model card) and in run configs.

    As in pix2pixHD (and therefore in the release's checkpoints), the
    full-resolution input goes through the *last* PatchGAN
    ``layer{num_D-1}`` and ``layer0`` sees the coarsest scale; the returned
    list is ordered from full resolution to coarsest. Each next scale is the
    previous one average-pooled (3x3, stride 2, padding 1, padding not
    counted).

    Input: ``(B, input_nc, H, W)``, the (H&E, IHC) pair concatenated along
    channels, each in [-1, 1]. Output: ``list`` of ``num_D`` patch score maps
    ``(B, 1, h_s, w_s)`` (raw scores, LSGAN: no sigmoid), or, with
    ``get_intermediate_features``, a list per scale of the ``n_layers + 2``
    block outputs (conv[+norm]+LReLU groups, then the final scores last), for
    pix2pixHD feature matching.
    """

    def __init__(
        self,
        input_nc: int = 6,
        ndf: int = 64,
        n_layers: int = 3,
        num_D: int = 3,  # noqa: N803 - name kept from pix2pixHD / the release
        get_intermediate_features: bool = False,
        padding: int = 1,
    ) -> None:
        super().__init__()
        if min(input_nc, ndf, n_layers, num_D) < 1:
            raise ValueError(
                f"MultiscaleDiscriminator needs input_nc, ndf, n_layers, num_D >= 1; got {input_nc}, {ndf}, {n_layers}, {num_D}"
            )
        if padding not in DISCRIMINATOR_PADDINGS:
            raise ValueError(f"MultiscaleDiscriminator padding must be one of {DISCRIMINATOR_PADDINGS}, got {padding!r}")
        self.init_kwargs: dict[str, Any] = dict(
            input_nc=input_nc,
            ndf=ndf,
            n_layers=n_layers,
            num_D=num_D,
            get_intermediate_features=get_intermediate_features,
            padding=padding,
        )
        self.num_D = num_D
        self.n_layers = n_layers
        self.get_intermediate_features = get_intermediate_features
        group_ends: list[int] = []
        for i in range(num_D):
            patchgan, group_ends = self._patchgan(input_nc, ndf, n_layers, padding)
            self.add_module(f"layer{i}", patchgan)
        # Sequential indices whose outputs are the pix2pixHD "intermediate features".
        self.feature_indices: tuple[int, ...] = tuple(group_ends)
        self.downsample = nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)

    @staticmethod
    def _patchgan(input_nc: int, ndf: int, n_layers: int, padw: int) -> tuple[nn.Sequential, list[int]]:
        kw = 4
        layers: list[nn.Module] = [
            nn.Conv2d(input_nc, ndf, kernel_size=kw, stride=2, padding=padw),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        ends = [len(layers) - 1]
        # Channels double per layer, capped at 8 * ndf (docs/method.md; pix2pixHD
        # caps at 512, which is the same number for the paper's ndf 64).
        nf = ndf
        for n in range(1, n_layers + 1):
            nf_prev, nf = nf, min(nf * 2, 8 * ndf)
            stride = 2 if n < n_layers else 1  # the last of these is stride 1
            layers += [
                nn.Conv2d(nf_prev, nf, kernel_size=kw, stride=stride, padding=padw),
                instance_norm(nf),
                nn.LeakyReLU(0.2, inplace=True),
            ]
            ends.append(len(layers) - 1)
        layers.append(nn.Conv2d(nf, 1, kernel_size=kw, stride=1, padding=padw))
        ends.append(len(layers) - 1)
        return nn.Sequential(*layers), ends

    @staticmethod
    def reference_key_map(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A state_dict of pix2pixHD's ``MultiscaleDiscriminator`` built with ``getIntermFeat`` (modules
        ``scale{s}_layer{j}``, one Sequential per conv group) with this class's ``layer{s}.<index>`` names.

        Group j of a PatchGAN starts with its conv, which sits at Sequential index
        0, 2, 5, 8, ... here (one LReLU after the first conv, norm + LReLU after
        the others). Other keys are kept as they are. The release's own layout
        (``layer{s}``, no intermediate features) needs no map.
        """
        out: dict[str, torch.Tensor] = {}
        for key, value in state_dict.items():
            head, _, rest = key.partition(".")
            scale, sep, group = head.partition("_layer")
            if not (sep and scale.startswith("scale") and scale[5:].isdigit() and group.isdigit() and rest.startswith("0.")):
                out[key] = value
                continue
            j = int(group)
            index = 0 if j == 0 else 3 * j - 1
            out[f"layer{scale[5:]}.{index}.{rest[2:]}"] = value
        return out

    def scale_modules(self) -> list[nn.Sequential]:
        """The PatchGANs in the order they are applied (full resolution first)."""
        return [getattr(self, f"layer{self.num_D - 1 - s}") for s in range(self.num_D)]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor] | list[list[torch.Tensor]]:
        results: list = []
        for s, patchgan in enumerate(self.scale_modules()):
            if self.get_intermediate_features:
                features: list[torch.Tensor] = []
                h = x
                for i, layer in enumerate(patchgan):
                    h = layer(h)
                    if i in self.feature_indices:
                        features.append(h)
                results.append(features)
            else:
                results.append(patchgan(x))
            if s != self.num_D - 1:
                x = self.downsample(x)
        return results


def multiscale_min_input(n_layers: int = 3, num_D: int = 3, padding: int = 1) -> int:  # noqa: N803
    """The smallest square input side a :class:`MultiscaleDiscriminator` accepts in training.

    Instance norm needs more than one pixel in every normalised map, and the
    last conv at least one output pixel, at every scale; each scale halves the
    side (average pool, rounding up). E.g. n_layers 3, 3 scales: 93 with
    padding 1 (the release), 5 with padding 2.
    """

    def fits(side: int) -> bool:
        for _ in range(num_D):
            h = side
            for n in range(n_layers + 1):
                h = (h + 2 * padding - 4) // (2 if n < n_layers else 1) + 1
                if n > 0 and h < 2:  # normalised maps need > 1 pixel
                    return False
            if (h + 2 * padding - 4) + 1 < 1:  # the final conv's scores
                return False
            side = (side + 1) // 2
        return True

    side = 1
    while not fits(side):
        side += 1
    return side


class NucleiDensityEstimator(nn.Module):
    """Nuclei density estimator E: encoder taps -> density map in [0, 1].

    ``self.model`` (keys as in the release, nef 128, 4 blocks): 0 conv 7x7
    (zero padding 3), 1 norm, 2 ReLU, 3..6 residual blocks as in G, 7 conv
    7x7 to 1 channel (zero padding 3), 8 sigmoid.
    """

    def __init__(self, input_nc: int = 896, nef: int = 128, n_blocks: int = 4, padding_type: str = "reflect") -> None:
        super().__init__()
        if min(input_nc, nef) < 1 or n_blocks < 0:
            raise ValueError(f"NucleiDensityEstimator needs input_nc, nef >= 1, n_blocks >= 0; got {input_nc}, {nef}, {n_blocks}")
        self.init_kwargs: dict[str, Any] = dict(input_nc=input_nc, nef=nef, n_blocks=n_blocks, padding_type=padding_type)
        layers: list[nn.Module] = [
            nn.Conv2d(input_nc, nef, kernel_size=7, padding=3, bias=True),
            instance_norm(nef),
            nn.ReLU(inplace=True),
        ]
        layers += [ResnetBlock(nef, padding_type) for _ in range(n_blocks)]
        layers += [nn.Conv2d(nef, 1, kernel_size=7, padding=3, bias=True), nn.Sigmoid()]
        self.model = nn.Sequential(*layers)

    def forward(self, taps: list[torch.Tensor], out_size: tuple[int, int]) -> torch.Tensor:
        """Density map from the generator's encoder taps.

        ``taps``: list of ``(B, C_k, h_k, w_k)`` (``ResnetGenerator.encode``),
        channels summing to ``input_nc``. Every tap is resized bilinearly
        (align_corners=True, as the release) to the first tap's size and
        concatenated. Returns ``(B, 1, *out_size)`` float in [0, 1], resized
        the same way.
        """
        size = taps[0].shape[-2:]
        # Resizing the first tap to its own size is the identity; skip it.
        resized = [taps[0]] + [
            t if t.shape[-2:] == size else F.interpolate(t, size=size, mode="bilinear", align_corners=True)
            for t in taps[1:]
        ]
        density = self.model(torch.cat(resized, dim=1))
        if tuple(density.shape[-2:]) != tuple(out_size):
            density = F.interpolate(density, size=tuple(out_size), mode="bilinear", align_corners=True)
        return density
