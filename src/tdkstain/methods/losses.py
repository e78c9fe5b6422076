"""Loss terms of the comparison methods, each a direct transcription of its published formula.

Images are ``(B, 3, H, W)`` float in [-1, 1]; every term is a scalar tensor
(mean reductions, as the reference code's ``nn.L1Loss`` / ``CrossEntropyLoss``).
:func:`gan_loss` (LSGAN / vanilla, summed over discriminator scales) is shared
by every method, TDKstain included.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F

__all__ = [
    "gan_loss",
    "gaussian_blur3",
    "bci_pyramid",
    "bci_pyramid_l1",
    "lptn_gauss_pyramid",
    "gauss_pyramid_l1",
    "feature_matching",
    "vgg_perceptual",
    "patch_nce",
    "asp_weights",
    "positive_logits",
    "PIX2PIXHD_VGG_WEIGHTS",
]

def gan_loss(outputs: list, real: bool, kind: str) -> torch.Tensor:
    """Sum over discriminator scales of the per-scale GAN loss against target 1 (real) or 0.

    ``outputs``: per-scale score maps ``(B, 1, h_s, w_s)`` (or per-scale lists
    whose last element is the score map). LSGAN: mean squared error; vanilla:
    binary cross-entropy on logits (pix2pix's ``BCEWithLogitsLoss``).
    """
    total = torch.zeros((), device=_first(outputs).device)
    for out in outputs:
        score = (out[-1] if isinstance(out, (list, tuple)) else out).float()
        target = torch.full_like(score, 1.0 if real else 0.0)
        if kind == "lsgan":
            total = total + F.mse_loss(score, target)
        else:
            total = total + F.binary_cross_entropy_with_logits(score, target)
    return total


def _first(outputs: list) -> torch.Tensor:
    o = outputs[0]
    return o[-1] if isinstance(o, (list, tuple)) else o


# pix2pixHD VGGLoss: weights of relu1_1 ... relu5_1.
PIX2PIXHD_VGG_WEIGHTS = (1.0 / 32, 1.0 / 16, 1.0 / 8, 1.0 / 4, 1.0)


def _gaussian_1d(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return (g / g.sum()).to(dtype=dtype, device=device)


def gaussian_blur3(x: torch.Tensor) -> torch.Tensor:
    """kornia ``gaussian_blur2d(x, (3, 3), (1, 1))``: separable 3-tap Gaussian, sigma 1, reflect border."""
    c = x.shape[1]
    g = _gaussian_1d(3, 1.0, x.dtype, x.device)
    x = F.pad(x, (1, 1, 1, 1), mode="reflect")
    x = F.conv2d(x, g.view(1, 1, 1, 3).expand(c, 1, 1, 3), groups=c)
    return F.conv2d(x, g.view(1, 1, 3, 1).expand(c, 1, 3, 1), groups=c)


def bci_pyramid(x: torch.Tensor, octaves: int) -> list[torch.Tensor]:
    """PyramidPix2pix's scales (bupt-ai-cz/BCI ``pix2pix_model.py``): each next octave is the
    previous one blurred 4 times (3x3, sigma 1) and subsampled by 2 (kornia
    ``blur_pool2d(., 1, stride=2)``, i.e. every second pixel). Returns
    ``[octave 2, ..., octave octaves + 1]`` (the full-resolution image is octave 1).
    """
    out = []
    for _ in range(octaves):
        for _ in range(4):
            x = gaussian_blur3(x)
        x = x[:, :, ::2, ::2]
        out.append(x)
    return out


def bci_pyramid_l1(fake: torch.Tensor, real: torch.Tensor, weights: list[float]) -> list[torch.Tensor]:
    """``weights[k] * L1(octave_{k+2}(fake), octave_{k+2}(real))`` per octave (BCI ``--pattern L1_L2_L3_L4``:
    weight_L2 = weight_L3 = weight_L4 = 25)."""
    fakes, reals = bci_pyramid(fake, len(weights)), bci_pyramid(real, len(weights))
    return [w * F.l1_loss(f, r) for w, f, r in zip(weights, fakes, reals)]


def lptn_gauss_pyramid(x: torch.Tensor, num_high: int) -> list[torch.Tensor]:
    """ASP's ``Gauss_Pyramid_Conv`` (from LPTN): ``num_high`` blurred levels, then the last subsampled one.

    Blur: 5x5 binomial kernel ``[1,4,6,4,1]^T [1,4,6,4,1] / 256``, reflect
    padding 2, per channel; next level = blurred[::2, ::2]. Returns
    ``num_high + 1`` tensors, finest first. Each level must be at least 3 px.
    """
    c = x.shape[1]
    k1 = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], dtype=x.dtype, device=x.device)
    kernel = (k1[:, None] * k1[None, :] / 256.0).expand(c, 1, 5, 5)
    levels = []
    for _ in range(num_high):
        blurred = F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), kernel, groups=c)
        levels.append(blurred)
        x = blurred[:, :, ::2, ::2]
    levels.append(x)
    return levels


def gauss_pyramid_l1(fake: torch.Tensor, real: torch.Tensor, weights: list[float]) -> torch.Tensor:
    """ASP's ``loss_GP`` before ``lambda_gp``: ``mean_l(w_l * L1(P_l(fake), P_l(real)))`` over
    ``len(weights)`` levels (MIST: 6 levels, weights 1/64 ... 1/4, 1)."""
    fakes, reals = lptn_gauss_pyramid(fake, len(weights) - 1), lptn_gauss_pyramid(real, len(weights) - 1)
    return torch.stack([w * F.l1_loss(f, r) for w, f, r in zip(weights, fakes, reals)]).mean()


def feature_matching(fake_features: list[list[torch.Tensor]], real_features: list[list[torch.Tensor]], n_layers: int) -> torch.Tensor:
    """pix2pixHD's GAN feature matching (before ``lambda_feat``):
    ``sum_s sum_j (1/num_D) * (4/(n_layers+1)) * L1(D_s^j(x, G(x)), D_s^j(x, y))``
    over every intermediate output j of every scale s (not the final scores);
    the real features are targets (detached)."""
    num_d = len(fake_features)
    total = torch.zeros((), device=fake_features[0][0].device)
    for fake_scale, real_scale in zip(fake_features, real_features):
        for f, r in zip(fake_scale[:-1], real_scale[:-1]):
            total = total + (1.0 / num_d) * (4.0 / (n_layers + 1)) * F.l1_loss(f.float(), r.detach().float())
    return total


def vgg_perceptual(fake_features: list[torch.Tensor], real_features: list[torch.Tensor],
                   weights: tuple[float, ...] = PIX2PIXHD_VGG_WEIGHTS) -> torch.Tensor:
    """pix2pixHD's ``VGGLoss`` (before ``lambda_feat``): ``sum_i w_i * L1(phi_i(G(x)), phi_i(y))``, real detached."""
    return sum(w * F.l1_loss(f.float(), r.detach().float()) for w, f, r in zip(weights, fake_features, real_features))


def patch_nce(query: torch.Tensor, key: torch.Tensor, batch: int, temperature: float) -> torch.Tensor:
    """CUT's PatchNCE per query (``reduction='none'``): cross-entropy of picking the positive.

    ``query``, ``key``: ``(B * P, C)`` L2-normalised projections (rows by
    sample, then patch); the key is detached. For query row (b, i): logits
    are ``q.k_(b,i)`` (positive) and ``q.k_(b,j)`` for every j != i of the
    same sample (negatives; the diagonal is set to -10 as CUT does, so it
    also enters the softmax), all divided by ``temperature``; the loss is
    ``-log softmax[positive]``. Returns ``(B * P,)``.
    """
    n, dim = query.shape
    key = key.detach()
    positive = (query * key).sum(1, keepdim=True)
    q = query.view(batch, -1, dim)
    k = key.view(batch, -1, dim)
    patches = q.shape[1]
    negatives = torch.bmm(q, k.transpose(1, 2))
    eye = torch.eye(patches, device=query.device, dtype=torch.bool)[None]
    negatives = negatives.masked_fill(eye, -10.0).reshape(-1, patches)
    logits = torch.cat([positive, negatives], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(n, dtype=torch.long, device=query.device), reduction="none")


def asp_weights(positive: torch.Tensor, epoch: int, total_epochs: int, decay_epochs: int) -> torch.Tensor:
    """ASP's adaptive weights, ``asp_loss_mode lambda_linear`` (lifangda01/AdaptiveSupervisedPatchNCE ``asp_loss.py``).

    ``positive``: ``(N,)`` positive logits ``q.k`` (detached); ``epoch``:
    1-based training epoch. Schedule "lambda": t = (epoch - 1) / total; with
    k = 1 - decay/total and m = 1/(1-k), p = 1 while t < k, else m - m t
    (falls linearly to 0 over the decay epochs). Lookup "linear":
    w1 = relu(q.k). w = p + (1 - p) w1, normalised to mean 1.
    """
    t = (epoch - 1) / total_epochs
    k = 1 - decay_epochs / total_epochs
    if decay_epochs == 0 or t < k:
        p = 1.0
    else:
        m = 1 / (1 - k)
        p = m - m * t
    w1 = torch.relu(positive.detach())
    w = p * 1.0 + (1 - p) * w1
    return w / w.sum() * len(w)


def positive_logits(query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """``q.k`` per row, ``(N,)``; key detached."""
    return (query * key.detach()).sum(1)

