"""VGG19 features for pix2pixHD's perceptual loss, in torchvision's layout (so the ImageNet file loads)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "VGG19_SLICES",
    "VGG19Features",
]

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
