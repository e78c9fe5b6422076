"""Aligned training data: H&E, IHC and the knowledge maps made from the IHC.

One sample is five images of the same tissue, cropped and flipped together:

- ``he``              ``(3, S, S)`` float32 in [-1, 1]   the input ``x``
- ``ihc``             ``(3, S, S)`` float32 in [-1, 1]   the target ``y``
- ``dab``             ``(3, S, S)`` float32 in [-1, 1]   DAB-only image ``K_M``
- ``membrane_mask``   ``(1, S, S)`` float32 in [0, 1]    soft membrane mask ``M``
- ``nuclei_density``  ``(1, S, S)`` float32 in [0, 1]    density map ``K_N``

(docs/method.md "Knowledge extraction"; the maps are written by ``tdkstain
extract`` in the release's folder names.) A branch whose loss weight is 0
does not load its maps.

Unpaired data (CycleGAN with ``options.unpaired``, :class:`UnpairedTiles`):
``he`` and ``ihc`` come from two separately listed sets of files of any
names; each H&E sample meets an IHC tile drawn independently of it.

Randomness is a pure function of ``(seed, epoch, index)``: the sampler yields
``(epoch, index)`` keys and each sample draws its crop and flip from a
generator seeded with them. So the stream does not depend on worker
processes or on where a run was interrupted, which is what makes resume
exact.

A bad tile is a :class:`TileError` naming the file, also when a DataLoader
worker process meets it (``data.workers`` >= 1): the user sees one line,
not torch's report of the worker's traceback.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler
from torch.utils.data.distributed import DistributedSampler

from tdkstain.plumbing.errors import TdkstainError
from tdkstain.data.images import read_float_map, read_gray, read_rgb
from tdkstain.data.pairs import Pair, discover_pairs, discover_unpaired, knowledge_paths


class TileError(TdkstainError):
    """A bad training tile (unreadable, of the wrong size, ...); the message names the file.

    Raised in a DataLoader worker, torch rebuilds the exception in the main
    process from its class and one text: "Caught TileError in DataLoader
    worker process 0. Original Traceback ..." followed by the worker's
    traceback, whose last line is ``tdkstain.data.tiles.TileError: MESSAGE``.
    Built from such a text, a TileError keeps MESSAGE alone.
    """

    def __init__(self, message: str = ""):
        super().__init__(_original_message(str(message)))


def _original_message(text: str) -> str:
    """MESSAGE of a TileError from torch's worker report around it (see :class:`TileError`); else ``text``."""
    if text.startswith("Caught ") and "\nOriginal Traceback" in text:
        marker = f"\n{TileError.__module__}.{TileError.__qualname__}: "
        at = text.rfind(marker)
        if at >= 0:
            return text[at + len(marker):].rstrip("\n")
    return text


def _as_tile_error(read):
    """``read`` (a dataset's ``__getitem__``) raising every TdkstainError as a :class:`TileError`."""
    import functools

    @functools.wraps(read)
    def wrapper(self, key):
        try:
            return read(self, key)
        except TileError:
            raise
        except TdkstainError as err:
            raise TileError(str(err)) from None

    return wrapper


@dataclass(frozen=True)
class TileFiles:
    """The files of one aligned sample (``None`` for a map that is not needed)."""

    stem: str
    he: Path
    ihc: Path
    dab: Path | None = None
    membrane_mask: Path | None = None
    nuclei_density: Path | None = None


def tile_files(
    root: str | Path,
    pairs: Sequence[Pair],
    *,
    membrane: bool,
    nuclei: bool,
    density_format: str = "png",
) -> list[TileFiles]:
    """Pair each tile with its knowledge maps; a clear error if any map is missing."""
    root = Path(root)
    files: list[TileFiles] = []
    missing: list[Path] = []
    for pair in pairs:
        dab = mask = density = None
        if membrane or nuclei:
            paths = knowledge_paths(root, pair.split, pair.stem)
            if membrane:
                dab, mask = Path(paths.dab), Path(paths.dab_mask)
                missing += [p for p in (dab, mask) if not p.is_file()]
            if nuclei:
                density = Path(paths.nuclei_map if density_format == "png" else paths.nuclei_map_float)
                if not density.is_file():
                    missing.append(density)
        files.append(TileFiles(pair.stem, Path(pair.he), Path(pair.ihc), dab, mask, density))
    if missing:
        shown = ", ".join(str(p) for p in missing[:3])
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise TdkstainError(
            f"{root}: knowledge maps missing for training ({shown}{more}); "
            f"run `tdkstain extract {root}` first, or set the weight of the branch that needs them to 0 "
            "(loss.membrane=0 for DAB images and masks, loss.nuclei=0 for density maps)"
        )
    return files


def _to_signed(rgb: np.ndarray) -> torch.Tensor:
    """``(H, W, 3)`` uint8 -> ``(3, H, W)`` float32 in [-1, 1] (x / 127.5 - 1)."""
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32)).div_(127.5).sub_(1.0)


def _to_unit(gray: np.ndarray) -> torch.Tensor:
    """``(H, W)`` uint8 0..255 (or float) -> ``(1, H, W)`` float32 in [0, 1] for uint8 input."""
    t = torch.from_numpy(np.ascontiguousarray(gray, dtype=np.float32))
    if gray.dtype == np.uint8:
        t = t.div_(255.0)
    return t[None]


def _read_density(path: Path) -> np.ndarray:
    if path.suffix.lower() in (".tif", ".tiff"):
        return read_float_map(path)  # float32 densities, used as stored
    return read_gray(path)


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of one sample's crop and flip: a pure function of its key."""
    return np.random.default_rng([seed, epoch, index])


class AlignedTiles(Dataset):
    """Aligned (he, ihc, dab, membrane_mask, nuclei_density) samples, indexed by ``(epoch, index)``.

    ``crop``: side of the random crop (``None``: whole tiles, centre-cropped
    to ``crop`` never). ``center``: take the central crop instead of a random
    one and never flip (validation). Every returned tensor is described in
    the module docstring; absent maps are simply left out of the dict.
    """

    def __init__(self, files: Sequence[TileFiles], crop: int | None, *, flip: bool, seed: int, center: bool = False):
        self.files = list(files)
        self.crop = crop
        self.flip = flip and not center
        self.seed = seed
        self.center = center

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int) -> dict[str, np.ndarray]:
        f = self.files[index]
        images = {"he": read_rgb(f.he), "ihc": read_rgb(f.ihc)}
        if f.dab is not None:
            images["dab"] = read_rgb(f.dab)
        if f.membrane_mask is not None:
            images["membrane_mask"] = read_gray(f.membrane_mask)
        if f.nuclei_density is not None:
            images["nuclei_density"] = _read_density(f.nuclei_density)
        shape = images["ihc"].shape[:2]
        for name, img in images.items():
            if img.shape[:2] != shape:
                path = getattr(f, name)
                raise TdkstainError(
                    f"{path}: {name} is {img.shape[1]}x{img.shape[0]} px but the IHC tile {f.ihc} is "
                    f"{shape[1]}x{shape[0]}; aligned images must have one size (re-run `tdkstain extract`)"
                )
        return images

    @_as_tile_error
    def __getitem__(self, key: tuple[int, int] | int) -> dict[str, torch.Tensor]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        images = self.load(index)
        h, w = images["ihc"].shape[:2]
        rng = sample_rng(self.seed, epoch, index)
        if self.crop is not None:
            if h < self.crop or w < self.crop:
                raise TdkstainError(
                    f"{self.files[index].ihc}: tile is {w}x{h} px, smaller than the crop {self.crop}; "
                    "lower data.crop"
                )
            if self.center:
                top, left = (h - self.crop) // 2, (w - self.crop) // 2
            else:
                top = int(rng.integers(0, h - self.crop + 1))
                left = int(rng.integers(0, w - self.crop + 1))
            images = {k: v[top : top + self.crop, left : left + self.crop] for k, v in images.items()}
        if self.flip and rng.random() < 0.5:
            images = {k: v[:, ::-1] for k, v in images.items()}
        sample: dict[str, torch.Tensor] = {"index": torch.tensor(index)}
        for name, img in images.items():
            sample[name] = _to_signed(img) if img.ndim == 3 else _to_unit(img)
        return sample


@dataclass(frozen=True)
class UnpairedFiles:
    """The two sides of an unpaired training set; its length is the number of H&E files."""

    he: tuple[Path, ...]
    ihc: tuple[Path, ...]

    def __len__(self) -> int:
        return len(self.he)


def _random_crop(image: np.ndarray, crop: int | None, rng: np.random.Generator, flip: bool, path: Path) -> np.ndarray:
    if crop is not None:
        h, w = image.shape[:2]
        if h < crop or w < crop:
            raise TdkstainError(f"{path}: tile is {w}x{h} px, smaller than the crop {crop}; lower data.crop")
        top, left = int(rng.integers(0, h - crop + 1)), int(rng.integers(0, w - crop + 1))
        image = image[top : top + crop, left : left + crop]
    if flip and rng.random() < 0.5:
        image = image[:, ::-1]
    return image


class UnpairedTiles(Dataset):
    """Unpaired ``{"index", "he", "ihc"}`` samples, indexed by ``(epoch, index)`` over the H&E files.

    Sample ``(epoch, index)`` takes H&E file ``index`` and the IHC file at
    position ``index mod n_ihc`` of a permutation of the IHC files drawn for
    the epoch (so in an epoch every IHC tile is used about equally, and which
    one meets which H&E tile changes from epoch to epoch). Each side gets its
    own random crop and flip. Everything is a pure function of ``(seed,
    epoch, index)``, like :class:`AlignedTiles`, so resume stays exact.
    ``he`` and ``ihc`` are ``(3, S, S)`` float32 in [-1, 1].
    """

    def __init__(self, files: UnpairedFiles, crop: int | None, *, flip: bool, seed: int):
        self.files, self.crop, self.flip, self.seed = files, crop, flip, seed
        self._permutation: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.files)

    def ihc_index(self, epoch: int, index: int) -> int:
        if self._permutation is None or self._permutation[0] != epoch:
            # the 1 keeps this stream apart from the per-sample streams sample_rng(seed, epoch, index)
            self._permutation = (epoch, np.random.default_rng([self.seed, epoch, 1, 1]).permutation(len(self.files.ihc)))
        return int(self._permutation[1][index % len(self.files.ihc)])

    @_as_tile_error
    def __getitem__(self, key: tuple[int, int] | int) -> dict[str, torch.Tensor]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        he_path, ihc_path = self.files.he[index], self.files.ihc[self.ihc_index(epoch, index)]
        rng = sample_rng(self.seed, epoch, index)
        he = _random_crop(read_rgb(he_path), self.crop, rng, self.flip, he_path)
        ihc = _random_crop(read_rgb(ihc_path), self.crop, rng, self.flip, ihc_path)
        if self.crop is None and he.shape != ihc.shape:
            raise TdkstainError(f"{ihc_path}: unpaired tiles of different sizes ({ihc.shape[1]}x{ihc.shape[0]} vs "
                                f"{he_path} {he.shape[1]}x{he.shape[0]}) need data.crop")
        return {"index": torch.tensor(index), "he": _to_signed(he), "ihc": _to_signed(ihc)}


def training_tiles(files: Sequence[TileFiles] | UnpairedFiles, crop: int | None, *, flip: bool, seed: int) -> Dataset:
    """The training dataset for what :func:`split_pairs` or :func:`split_unpaired` listed."""
    if isinstance(files, UnpairedFiles):
        return UnpairedTiles(files, crop, flip=flip, seed=seed)
    return AlignedTiles(files, crop, flip=flip, seed=seed)


class EpochBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of ``(epoch, index)`` keys, forever, starting at any step.

    Each epoch is a permutation drawn by ``torch.utils.data.DistributedSampler``
    (seeded with ``seed + epoch``; one replica when not distributed), so one
    process with batch ``B * K`` and K processes with batch ``B`` see the same
    tiles in each global batch. The last batch of an epoch may be short.
    ``start_step`` skips the batches a resumed run has already trained on.
    """

    def __init__(self, n: int, batch: int, *, seed: int, rank: int = 0, world: int = 1, shuffle: bool = True, start_step: int = 0):
        self.n, self.batch, self.seed = n, batch, seed
        self.rank, self.world, self.shuffle = rank, world, shuffle
        self.start_step = start_step
        self.steps_per_epoch = math.ceil(math.ceil(n / world) / batch)

    def epoch_indices(self, epoch: int) -> list[int]:
        sampler = DistributedSampler(
            range(self.n), num_replicas=self.world, rank=self.rank, shuffle=self.shuffle, seed=self.seed, drop_last=False
        )
        sampler.set_epoch(epoch)
        return list(sampler)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, offset = divmod(self.start_step, self.steps_per_epoch)
        while True:
            indices = self.epoch_indices(epoch)
            for b in range(offset, self.steps_per_epoch):
                yield [(epoch, i) for i in indices[b * self.batch : (b + 1) * self.batch]]
            epoch, offset = epoch + 1, 0

    def __len__(self) -> int:  # an endless stream; DataLoader only needs this for len()
        return 2**62


def split_pairs(root: str | Path, train_split: str, val_split: str, val_pairs: int) -> tuple[list[Pair], list[Pair]]:
    """Training pairs and held-out validation pairs.

    Validation uses the first ``val_pairs`` pairs of ``val_split`` (sorted by
    stem); if that split has none, the last ``val_pairs`` training pairs are
    held out instead (and not trained on).
    """
    root = Path(root)
    train = sorted(discover_pairs(root, split=train_split), key=lambda p: p.stem)
    if not train:
        raise TdkstainError(
            f"{root}: no '{train_split}' pairs found; check the layout with `tdkstain check {root}` "
            "(CycleGAN trains on unpaired H&E and IHC folders with options.unpaired=true)"
        )
    if val_pairs == 0:
        return train, []
    val = sorted(discover_pairs(root, split=val_split), key=lambda p: p.stem) if val_split != train_split else []
    if val:
        return train, val[:val_pairs]
    if len(train) <= val_pairs:
        raise TdkstainError(
            f"{root}: no '{val_split}' pairs to validate on and only {len(train)} training pairs; "
            "set data.val_pairs=0 or add a test split"
        )
    return train[:-val_pairs], train[-val_pairs:]


def split_unpaired(root: str | Path, train_split: str, val_split: str, val_pairs: int) -> tuple[UnpairedFiles, list[Pair]]:
    """Unpaired training files (each side listed on its own, :func:`discover_unpaired`) and validation pairs.

    Validation needs aligned pairs: the first ``val_pairs`` pairs of
    ``val_split`` when it has any, else none (nothing is held out of
    unpaired training data).
    """
    import warnings

    root = Path(root)
    he, ihc = discover_unpaired(root, split=train_split)
    val: list[Pair] = []
    if val_pairs > 0 and val_split != train_split:
        with warnings.catch_warnings():  # an unpaired validation split only means: no validation
            warnings.simplefilter("ignore")
            val = sorted(discover_pairs(root, split=val_split), key=lambda p: p.stem)[:val_pairs]
    return UnpairedFiles(tuple(he), tuple(ihc)), val


def collate(samples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([s[k] for s in samples]) for k in samples[0]}
