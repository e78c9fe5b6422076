"""Image-quality metrics of generated IHC against real IHC.

- :mod:`~tdkstain.metrics.image`: SSIM and PSNR per pair (scikit-image, as the BCI/ASP scripts).
- :mod:`~tdkstain.metrics.inception` and :mod:`~tdkstain.metrics.fid`: FID and KID on the
  canonical TF-ported Inception pool3 features, streamed in batches.
- :mod:`~tdkstain.metrics.perceptual`: DISTS and LPIPS on ImageNet backbones.
- :mod:`~tdkstain.weights.files`: where the pretrained files are found (never downloaded).

Submodules import torch and scipy; import them where they are used.
"""
