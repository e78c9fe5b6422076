"""Fixtures and helpers shared by several test modules.

Test material lives in ``tests/fixtures/`` (copied from the project's shared
folder, provenance in ``tests/fixtures/README.md``), so every test runs in a
plain clone. Module-specific helpers stay in their module; a helper two
modules need lives here (test modules never import each other).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

TESTS = Path(__file__).resolve().parent
FIXTURES = TESTS / "fixtures"
OFFICIAL = FIXTURES / "official"  # the authors' release (TDKstain G, D, E, DAB mask)
REFERENCE = FIXTURES / "reference"  # the baselines' reference code (pix2pix ... ASP)
DATA = FIXTURES / "data"  # real H&E and IHC images
EXAMPLES = TESTS.parent / "src" / "tdkstain" / "examples"  # shipped with the package (real SVS slide)


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """``tests/fixtures``: ``official/``, ``reference/<method>/`` and ``data/``."""
    return FIXTURES


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """One intra-op thread: on a shared 2-core machine two threads ran ~20x slower than one for tiny nets."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------- tiny training runs

TINY = [
    "model.ngf=4", "model.n_blocks=1", "model.ndf=4", "model.num_d=1", "model.nef=4", "model.estimator_blocks=1",
    "data.crop=32", "data.batch=2", "data.val_pairs=2", "train.device=cpu", "train.tensorboard=false",
    "train.log_every=1", "train.val_every=3", "train.checkpoint_every=2", "train.keep_last=2",
]


def _png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def make_dataset(root: Path, n_train: int = 4, n_test: int = 2, size: int = 48, seed: int = 0, knowledge: bool = True) -> Path:
    """Release-layout pairs plus knowledge maps with exact, learnable structure.

    H&E: smooth random colour fields. IHC: a fixed per-pixel colour map of
    the H&E (so a generator can learn it exactly). DAB image, membrane mask
    and density map: plausible uint8 images in the extractor's folders.
    """
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        for i in range(n):
            stem = f"tile_{i:03d}_{'0 1+ 2+ 3+'.split()[i % 4]}"
            field = ndimage.gaussian_filter(rng.random((size, size, 3)), (3, 3, 0))
            field = (field - field.min()) / (np.ptp(field) + 1e-9)
            he = (60 + 180 * field).astype(np.uint8)
            ihc = (255 - 0.8 * he[..., ::-1]).astype(np.uint8)
            _png(root / f"{split}_HE" / f"{stem}.png", he)
            _png(root / f"{split}_IHC" / f"{stem}.png", ihc)
            if knowledge:
                brown = (ihc[..., 2] < 120)
                dab = np.where(brown[..., None], np.array([150, 90, 40], np.uint8), np.uint8(255)).astype(np.uint8)
                mask = (ndimage.gaussian_filter(brown.astype(float), 2) * 255).astype(np.uint8)
                dots = np.zeros((size, size))
                dots[tuple(rng.integers(0, size, (2, 6)))] = 1
                density = ndimage.gaussian_filter(dots, 3)
                density = (255 * density / density.max()).astype(np.uint8)
                _png(root / f"{split}_IHC_dab" / f"{stem}.png", dab)
                _png(root / f"{split}_IHC_dab_mask" / f"{stem}.png", mask)
                _png(root / f"{split}_IHC_nuclei_map" / f"{stem}.png", density)
    return root


def tiny(root: Path, *overrides: str):
    """A tiny TDKstain config (``TINY``) training on ``root``, plus ``overrides``."""
    from tdkstain.training.config import build_config

    return build_config({}, [*TINY, f"data.root={root}", *overrides])


def biases_before_instance_norm(nets: dict) -> set[str]:
    """Names of conv biases followed by an instance norm (which cancels them: they get no gradient)."""
    import torch

    names = set()
    for net_name, net in nets.items():
        for seq_name, seq in net.named_modules():
            if not isinstance(seq, torch.nn.Sequential):
                continue
            layers = list(seq)
            for i, (layer, after) in enumerate(zip(layers, layers[1:])):
                if isinstance(layer, torch.nn.modules.conv._ConvNd) and isinstance(after, torch.nn.InstanceNorm2d):
                    names.add(f"{net_name}.{seq_name}.{i}.bias".replace("..", "."))
    return names


# ----------------------------------------------------------------------------- synthetic slides


def he_like(height: int, width: int, seed: int = 0) -> np.ndarray:
    """White glass with pink/purple textured tissue in an ellipse over the left two thirds.

    Returns ``(height, width, 3)`` uint8 and the ``(height, width)`` bool tissue truth.
    """
    rng = np.random.default_rng(seed)
    image = np.clip(rng.normal(244, 3, (height, width, 3)), 0, 255)
    yy, xx = np.mgrid[:height, :width]
    tissue = ((yy - height * 0.5) / (height * 0.4)) ** 2 + ((xx - width * 0.35) / (width * 0.3)) ** 2 < 1
    texture = rng.random((height // 8 + 1, width // 8 + 1)).repeat(8, 0).repeat(8, 1)[:height, :width]
    pink = np.array([225, 140, 190]) * (1 - texture[..., None]) + np.array([110, 60, 150]) * texture[..., None]
    image[tissue] = pink[tissue] + rng.normal(0, 4, (int(tissue.sum()), 3))
    return np.clip(image, 0, 255).astype(np.uint8), tissue


@pytest.fixture(scope="session")
def tiny_slide_checkpoint(tmp_path_factory) -> Path:
    """A tiny untrained TDKstain generator (ngf 4, one residual block, seed 0) in our safetensors format; its
    model card says tiles of 128 px at 0.5 um/px. Fast enough to stain small synthetic slides in tests."""
    import torch

    from tdkstain.models.tdkstain import ResnetGenerator
    from tdkstain.weights import save_network

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "generator.safetensors"
    save_network(path, ResnetGenerator(ngf=4, n_blocks=1).eval(), tile_size=128, mpp=0.5)
    return path


def write_test_slide(path: Path, image: np.ndarray, mpp: float | None, levels: int = 3) -> Path:
    """A generic tiled pyramidal TIFF written with tifffile alone (not our writer), level k = level 0 / 2**k."""
    import tifffile
    from PIL import Image

    with tifffile.TiffWriter(path) as tiff:
        level = image
        for k in range(levels):
            kwargs = {}
            if mpp is not None:
                kwargs = dict(resolution=(1e4 / (mpp * 2**k),) * 2, resolutionunit="CENTIMETER")
            tiff.write(level, tile=(128, 128), photometric="rgb", compression="zlib", subfiletype=1 if k else 0,
                       metadata=None, **kwargs)
            level = np.asarray(Image.fromarray(level).reduce(2))
    return path


# ----------------------------------------------------------------------------- headless Chromium

CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
)
# Runs after every image has loaded or failed: the title becomes "images=N broken=M".
PROBE = """<script>
window.addEventListener('load', function () {
  var images = Array.prototype.slice.call(document.images);
  var broken = images.filter(function (im) { return !im.complete || im.naturalWidth === 0; });
  document.title = 'images=' + images.length + ' broken=' + broken.length +
                   ' names=' + broken.map(function (im) { return im.getAttribute('src'); }).join(',');
});
</script>"""


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


