"""Coverage-guided fuzzing of the image loader with atheris (optional; not part of the test suite).

Every input, whatever its bytes, must give a ``(H, W, 3)`` uint8 array or a
``TdkstainError``; any other exception is a finding (atheris stops and
writes the input to ``crash-*``). The file is written under a few suffixes
because nothing in the loader trusts the extension, and that is worth
checking too.

Run (Linux, CPython 3.8-3.11 wheels; atheris is not a tdkstain dependency)::

    pip install atheris
    mkdir -p fuzz/corpus && python fuzz/fuzz_loader.py --make-seeds fuzz/corpus
    python fuzz/fuzz_loader.py fuzz/corpus -max_len=65536 -timeout=20 -rss_limit_mb=4096 -runs=200000

A finding reproduces with ``python fuzz/fuzz_loader.py crash-XXXX``.
"""

from __future__ import annotations

import io
import logging
import os
import sys
import tempfile
import warnings
from pathlib import Path

# A pixel cap far below the default keeps each run fast and memory-bounded; the cap
# itself is part of what is fuzzed (headers that claim huge sizes must be refused).
MAX_PIXELS = 4_000_000
SUFFIXES = (".png", ".jpg", ".tif")


def make_seeds(folder: Path) -> None:
    """Small valid PNG / JPEG / TIFF / BMP files for the corpus: mutations of them reach deep decoder paths."""
    import numpy as np
    import tifffile
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rgb = np.arange(16 * 12 * 3, dtype=np.uint8).reshape(16, 12, 3)
    for fmt, kwargs in (("PNG", {}), ("JPEG", {"quality": 90}), ("JPEG", {"progressive": True}), ("BMP", {}),
                        ("TIFF", {}), ("WEBP", {})):
        buffer = io.BytesIO()
        Image.fromarray(rgb).save(buffer, format=fmt, **kwargs)
        name = f"seed_{fmt.lower()}{'_progressive' if kwargs.get('progressive') else ''}"
        (folder / name).write_bytes(buffer.getvalue())
    for name, array, kwargs in (
        ("seed_tiff_zlib", rgb, {"photometric": "rgb", "compression": "zlib"}),
        ("seed_tiff_16bit", rgb.astype(np.uint16) * 257, {"photometric": "rgb"}),
        ("seed_tiff_planar", np.moveaxis(rgb, 2, 0), {"photometric": "rgb", "planarconfig": "separate"}),
        ("seed_tiff_float", rgb.astype(np.float32) / 255, {"photometric": "rgb"}),
        ("seed_tiff_grey", rgb[:, :, 0], {"photometric": "minisblack"}),
    ):
        buffer = io.BytesIO()
        tifffile.imwrite(buffer, array, **kwargs)
        (folder / name).write_bytes(buffer.getvalue())


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--make-seeds":
        make_seeds(Path(sys.argv[2]))
        return

    import atheris

    with atheris.instrument_imports():
        import numpy as np

        from tdkstain.plumbing.errors import TdkstainError
        from tdkstain.data.images import read_rgb

    logging.disable(logging.CRITICAL)  # tifffile logs every broken tag
    warnings.simplefilter("ignore")
    workdir = Path(tempfile.mkdtemp(prefix="tdkstain-fuzz-"))

    def test_one_input(data: bytes) -> None:
        if not data:
            return
        path = workdir / f"input{SUFFIXES[data[0] % len(SUFFIXES)]}"
        path.write_bytes(data)
        try:
            rgb = read_rgb(path, max_pixels=MAX_PIXELS)
        except TdkstainError:
            return
        finally:
            path.unlink()
        if not (isinstance(rgb, np.ndarray) and rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
                and 0 < rgb.shape[0] * rgb.shape[1] <= MAX_PIXELS):
            raise AssertionError(f"read_rgb returned {type(rgb).__name__} {getattr(rgb, 'shape', '')}")

    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
