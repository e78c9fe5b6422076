"""``tdkstain evaluate``: image metrics and knowledge analyses of one or several generators.

Flow: pair files by stem (``pairing``) -> stream over the tiles: per-tile
SSIM, PSNR and knowledge analyses (in worker processes), Inception features
and perceptual distances (in the main process, batched on the device) ->
aggregate -> ``metrics.json``, ``per_image.csv``, plots and ``index.html``
(``report``). Nothing holds more than one batch of images at a time, so a
600-tile evaluation at 1024 x 1024 fits in a few hundred MB.

With several methods (``--compare``), every method is evaluated on the tiles
that all of them generated (a fair table); tiles some method lacks are
listed in the output.

An evaluation of a single tile still reports SSIM, PSNR, DISTS, LPIPS and the
knowledge analyses; FID and KID, which need at least two tiles, are marked
unavailable with the reason, as for missing weights.
"""

from __future__ import annotations

import csv
import io
import json
import math
import multiprocessing
import os
import re
import sys
import time
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from tdkstain import __version__
from tdkstain.plumbing.jsonsafe import json_safe
from tdkstain.plumbing.atomic import read_error, safe_strings, write_error, write_text_atomic
from tdkstain.plumbing.errors import TdkstainError
from tdkstain.evaluation.analyses import MEMBRANE_THRESHOLDS, TileAnalysis, aggregate, compare_tile, real_knowledge
from tdkstain.evaluation.pairing import ImagePair, Pairing, pair_by_stem, read_labels_csv
from tdkstain.data.images import read_rgb
from tdkstain.knowledge.maps import ExtractionParams

METRICS_JSON = "metrics.json"
# Fewest tiles FID and KID are defined on (tdkstain.metrics.fid.MIN_IMAGES; tested equal).
FID_MIN_TILES = 2
PER_IMAGE_CSV = "per_image.csv"
_METHOD_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")

SSIM_DEFINITION = (
    "skimage.metrics.structural_similarity(real, generated, channel_axis=-1, data_range=255) on (H, W, 3) uint8 RGB, "
    "7x7 uniform window, K1=0.01, K2=0.03 (the BCI / ASP evaluation scripts); mean over tiles"
)
PSNR_DEFINITION = (
    "10 log10(255^2 / MSE) over all pixels and channels of uint8 RGB (skimage peak_signal_noise_ratio, "
    "data_range=255); mean over tiles whose images differ (identical pairs are infinite and counted apart)"
)
FID_DEFINITION = (
    "Frechet distance between Gaussians fitted to the 2048-d pool3 features of the TF-ported Inception-v3 "
    "(inception-2015-12-05, TF1 bilinear resize to 299 px) of all real and all generated tiles "
    "(the pytorch-fid / torch-fidelity definition)"
)
KID_DEFINITION = (
    "unbiased MMD^2 with the cubic polynomial kernel (x.y / 2048 + 1)^3 on the same Inception features, "
    "mean and std over random subsets (Binkowski et al. 2018, the torch-fidelity definition)"
)
DISTS_DEFINITION = "DISTS (Ding et al. 2020): VGG16 with L2 pooling, published alpha/beta; mean over tiles"
LPIPS_DEFINITION = "LPIPS (Zhang et al. 2018): ImageNet backbone features with the published linear weights; mean over tiles"


@dataclass
class EvaluationOptions:
    """Every setting of an evaluation; the only copy of each default."""

    fid: bool = True  # FID and KID (needs the Inception network)
    perceptual: bool = True  # DISTS and LPIPS (need their ImageNet backbones)
    inception_weights: str | None = None
    vgg16_weights: str | None = None
    device: str = "auto"
    batch_size: int = 16  # images per forward pass of the feature networks
    workers: int = 1  # processes for SSIM, PSNR and the knowledge analyses
    grid_tiles: int = 2  # tiles per HER2 score (or in all, unlabelled) in the report's grids
    extraction: str | None = None  # extraction.json or a dataset root holding one; None: look beside --real
    thresholds: tuple[float, ...] = MEMBRANE_THRESHOLDS
    progress: bool = True
    max_pixels: int | None = None  # largest tile read, in pixels; None: tdkstain.data.images.DEFAULT_MAX_PIXELS
    her2: bool = True  # score HER2 on the real and the generated IHC of each pair (tdkstain.scoring) and compare
    scoring: Any = None  # tdkstain.scoring.ScoringParams; None: its defaults at the extraction's nuclei mpp


@dataclass
class TileRecord:
    """Everything measured on one generated tile."""

    stem: str
    label: str | None
    ssim: float
    psnr: float
    analysis: TileAnalysis
    perceptual: dict[str, float] = field(default_factory=dict)  # "dists"/"lpips" -> value
    her2: dict | None = None  # real and generated HER2 score, H-score and DAB measures (_her2_of_pair)


@dataclass
class MethodResult:
    """One method's records and aggregates."""

    name: str
    fake_dir: Path
    pairing: Pairing
    records: list[TileRecord] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    features: list[np.ndarray] = field(default_factory=list)  # Inception features per batch, for FID/KID


# --------------------------------------------------------------------------- settings


def resolve_extraction_params(real_dir: Path, extraction: str | os.PathLike | None) -> tuple[ExtractionParams, str]:
    """The extraction settings training used, and where they came from.

    ``extraction``: an ``extraction.json`` file or a dataset root holding one.
    None: ``REAL_DIR/extraction.json``, then ``REAL_DIR/../extraction.json``
    (the release layout keeps tiles in ``ROOT/test_IHC``), else the release defaults.
    """
    from tdkstain.knowledge.extraction.records import read_extraction_record

    candidates: list[Path]
    if extraction is not None:
        path = Path(extraction)
        if path.is_file():
            candidates = [path]
        elif (path / "extraction.json").is_file():
            candidates = [path / "extraction.json"]
        else:
            raise TdkstainError(f"--extraction {path}: neither an extraction.json file nor a folder holding one")
    else:
        candidates = [p for p in (real_dir / "extraction.json", real_dir.parent / "extraction.json") if p.is_file()]
    for path in candidates:
        record = read_extraction_record(path.parent) if path.name == "extraction.json" else None
        if record is None:
            try:
                record = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as err:
                raise TdkstainError(f"{path}: not readable JSON ({err})") from None
        data = record.get("params", record) if isinstance(record, dict) else record
        return ExtractionParams.from_dict(data, source=str(path)), str(path)
    return ExtractionParams(), "defaults (release recipe; no extraction.json beside the real tiles)"


def parse_compare(values: list[str]) -> dict[str, Path]:
    """``["NAME=DIR", ...]`` -> ``{name: Path(dir)}``; names unique and file-name safe."""
    out: dict[str, Path] = {}
    for value in values:
        name, sep, folder = value.partition("=")
        if not sep or not name or not folder:
            raise TdkstainError(f"--compare {value!r}: write NAME=FAKE_DIR, e.g. pix2pix=results/pix2pix/test")
        check_method_name(name)
        if name in out:
            raise TdkstainError(f"--compare: the method name {name!r} is given twice")
        out[name] = Path(folder)
    return out


def check_method_name(name: str) -> str:
    if not _METHOD_NAME.match(name):
        raise TdkstainError(
            f"method name {name!r}: use letters, digits and . _ + - only (it names files of the report)"
        )
    return name


# --------------------------------------------------------------------------- per-tile work (worker processes)


def _read(path: str | os.PathLike, max_pixels: int | None) -> np.ndarray:
    """``read_rgb`` with the evaluation's pixel limit (None: the reader's default)."""
    return read_rgb(path) if max_pixels is None else read_rgb(path, max_pixels=max_pixels)


def _tile_task(
    stem: str, real_path: str, fakes: list[tuple[str, str]], params_dict: dict, thresholds: tuple[float, ...],
    max_pixels: int | None = None, scoring_dict: dict | None = None,
) -> dict[str, tuple[float, float, TileAnalysis, dict | None]]:
    """SSIM, PSNR, the knowledge analyses and the HER2 comparison of every method's tile ``stem``.

    The real tile's knowledge and HER2 score are computed once; ``scoring_dict`` None: no HER2 scoring.
    """
    from tdkstain.metrics.image import psnr, ssim

    params = ExtractionParams.from_dict(params_dict)
    real = _read(real_path, max_pixels)
    known = real_knowledge(real, params, thresholds)
    real_score = None
    if scoring_dict is not None:
        from tdkstain.scoring import ScoringParams, score_tile

        scoring = ScoringParams.from_dict(scoring_dict)
        real_score = score_tile(real, scoring).result
    out = {}
    for method, fake_path in fakes:
        fake = _read(fake_path, max_pixels)
        if fake.shape != real.shape:
            raise TdkstainError(
                f"{fake_path} is {fake.shape[1]}x{fake.shape[0]} px but its real tile {real_path} is "
                f"{real.shape[1]}x{real.shape[0]} px; generate at the real tile's size"
            )
        her2 = None if real_score is None else _her2_of_pair(real, fake, real_score, scoring)
        out[method] = (ssim(real, fake), psnr(real, fake), compare_tile(known, fake, params, thresholds), her2)
    return out


def _her2_of_pair(real: np.ndarray, fake: np.ndarray, real_score: Any, scoring: Any) -> dict:
    """HER2 score and H-score of the real and the generated tile, and their pixel-level DAB agreement."""
    from tdkstain.scoring import score_tile
    from tdkstain.scoring.agreement import dab_measures

    fake_score = score_tile(fake, scoring).result
    return {
        "real_score": real_score.score, "generated_score": fake_score.score,
        "real_h_score": real_score.h_score, "generated_h_score": fake_score.h_score,
        "real_tumour_cells": real_score.tumour_cells, "generated_tumour_cells": fake_score.tumour_cells,
        **dab_measures(real, fake),
    }


def _pool_context() -> multiprocessing.context.BaseContext:
    # forkserver: never fork a parent holding torch / BLAS threads (see extraction.dataset).
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["tdkstain.evaluation.runner", "tdkstain.knowledge.nuclei"])
        return context
    return multiprocessing.get_context("spawn")


# --------------------------------------------------------------------------- deep metrics (main process)


@dataclass
class _DeepMetrics:
    """The feature networks that could be loaded, and why the others could not."""

    inception: Any = None
    perceptual: dict[str, Any] = field(default_factory=dict)  # name -> callable(real, fake) -> (B,) values
    unavailable: dict[str, str] = field(default_factory=dict)  # metric -> reason
    descriptions: dict[str, str] = field(default_factory=dict)
    canonical: dict[str, bool] = field(default_factory=dict)


def _too_few_tiles_for_fid(n_tiles: int, minimum: int) -> str:
    return (
        f"FID and KID need at least {minimum} tiles (FID fits a covariance to each set's Inception features, "
        f"KID averages a kernel over pairs of different tiles); this evaluation has {n_tiles}"
    )


def _load_deep_metrics(options: EvaluationOptions, n_tiles: int | None = None) -> _DeepMetrics:
    """The feature networks of the asked metrics; ``n_tiles``: tiles to evaluate (FID and KID need 2 or more)."""
    from tdkstain.weights.files import MetricUnavailable

    deep = _DeepMetrics()
    if options.fid and n_tiles is not None and n_tiles < FID_MIN_TILES:
        # Not an error: the other metrics stand; the Inception network is not even loaded.
        deep.unavailable["fid"] = deep.unavailable["kid"] = _too_few_tiles_for_fid(n_tiles, FID_MIN_TILES)
    elif options.fid:
        try:
            from tdkstain.metrics import fid  # noqa: F401  (FeatureStats, frechet_distance, KID)
            from tdkstain.metrics.inception import InceptionFeatures

            deep.inception = InceptionFeatures(options.inception_weights, device=options.device, batch_size=options.batch_size)
            deep.descriptions["fid"] = deep.descriptions["kid"] = deep.inception.description
            deep.canonical["fid"] = deep.canonical["kid"] = True
        except ImportError as err:
            deep.unavailable["fid"] = deep.unavailable["kid"] = f"tdkstain.metrics.fid is not available ({err})"
        except MetricUnavailable as err:
            deep.unavailable["fid"] = deep.unavailable["kid"] = str(err)
    else:
        deep.unavailable["fid"] = deep.unavailable["kid"] = "switched off (--no-fid)"
    if options.perceptual:
        for name in ("dists", "lpips"):
            try:
                metric = _perceptual_metric(name, options)
            except MetricUnavailable as err:
                deep.unavailable[name] = str(err)
            except ImportError as err:
                deep.unavailable[name] = f"tdkstain.metrics.perceptual is not available in this installation ({err})"
            else:
                deep.perceptual[name] = metric
                deep.canonical[name] = bool(getattr(metric, "canonical", True))
                deep.descriptions[name] = getattr(metric, "description", name.upper())
    else:
        deep.unavailable["dists"] = deep.unavailable["lpips"] = "switched off (--no-perceptual)"
    return deep


def _perceptual_metric(name: str, options: EvaluationOptions) -> Any:
    """A loaded DISTS or LPIPS from ``tdkstain.metrics.perceptual`` (raises MetricUnavailable without weights)."""
    from tdkstain.metrics import perceptual

    if name == "dists":
        return perceptual.DISTS(vgg16_weights=options.vgg16_weights, device=options.device)
    # LPIPS on VGG16, the variant image-translation papers report.
    return perceptual.LPIPS("vgg", backbone_weights=options.vgg16_weights, device=options.device)


def _stack(images: list[np.ndarray]) -> list[np.ndarray]:
    """Group same-sized images into (N, H, W, 3) batches (a folder may mix tile sizes).

    Real and generated lists of one batch are grouped alike (their sizes are checked equal per tile).
    """
    if all(im.shape == images[0].shape for im in images):
        return [np.stack(images)]
    return [im[None] for im in images]


# --------------------------------------------------------------------------- the evaluation


def evaluate(
    real_dir: str | os.PathLike,
    methods: dict[str, str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    he_dir: str | os.PathLike | None = None,
    labels_csv: str | os.PathLike | None = None,
    options: EvaluationOptions | None = None,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Evaluate generated IHC against real IHC and write the report under ``out_dir``.

    Args:
        real_dir: folder of real IHC tiles.
        methods: ``{name: folder of generated tiles}``, one or more (insertion order = table order).
        out_dir: report folder (created); holds metrics.json, per_image.csv, plots/, grids/, index.html.
        he_dir: optional H&E tiles, shown in the grids.
        labels_csv: optional ``stem,label`` CSV; default: BCI-style labels in the file names.
        options: metric networks, device, worker processes, grid size, extraction settings.
        log: receives progress lines (default: stderr).
    Returns:
        The content of ``metrics.json``.

    With ``options.workers > 1`` worker processes are started (forkserver or
    spawn); a script calling this must guard its top level with
    ``if __name__ == "__main__":``, as for any Python multiprocessing.
    """
    options = options or EvaluationOptions()
    log = log or (lambda message: print(message, file=sys.stderr))
    _check_request(methods, options)
    real_dir, out_dir = Path(real_dir), Path(out_dir)
    labels = read_labels_csv(labels_csv) if labels_csv is not None else None
    params, params_source = resolve_extraction_params(real_dir, options.extraction)
    results = [
        MethodResult(name, Path(folder), _pair_by_stem(real_dir, folder, he_dir, labels)) for name, folder in methods.items()
    ]
    pairs, fakes = _tiles_of_every_method(results)
    log(f"evaluate: {len(pairs)} tiles x {len(results)} method(s); extraction settings: {params_source}")
    _make_report_folder(out_dir)  # before minutes of work: a file in the way is found now

    started = time.perf_counter()
    deep = _load_deep_metrics(options, len(pairs))
    for metric, reason in deep.unavailable.items():
        log(f"evaluate: {metric.upper()} unavailable: {reason}")
    measured = _measure_tiles(pairs, results, fakes, params, deep, options)
    _attach_records(results, pairs, measured)
    real_all = np.concatenate(measured.real_features) if measured.real_features else None
    for r in results:
        r.summary = _summarise(r, real_all, deep, options)

    metrics = _metrics_document(real_dir, he_dir, labels_csv, pairs, params, params_source, deep, results, started,
                                options)
    _make_report_folder(out_dir)
    _write_per_image_csv(out_dir / PER_IMAGE_CSV, results, options.thresholds)
    # Stems and folders that are not valid UTF-8 are written with U+FFFD (plumbing.atomic.safe_text).
    write_text_atomic(out_dir / METRICS_JSON, json.dumps(safe_strings(json_safe(metrics)), indent=2) + "\n")

    from tdkstain.evaluation.report import write_report

    write_report(out_dir, metrics, results, pairs, params, options)
    log(f"evaluate: wrote {out_dir / METRICS_JSON}, {out_dir / PER_IMAGE_CSV} and {out_dir / 'index.html'}")
    return metrics


def _pair_by_stem(real_dir: Path, fake_dir: str | os.PathLike, he_dir: str | os.PathLike | None,
                  labels: dict[str, str] | None) -> Pairing:
    """``pair_by_stem``; a folder that cannot be listed is an error about *reading* it, naming it."""
    try:
        return pair_by_stem(real_dir, fake_dir, he_dir, labels)
    except OSError as err:
        if err.filename is None:
            raise
        where = Path(os.fsdecode(err.filename))
        raise read_error(where, err, folder=os.path.isdir(where)) from err


def _make_report_folder(out_dir: Path) -> None:
    """Create the report folder; a file in the way or a folder refusing writes is an error naming it."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        friendly = write_error(out_dir / METRICS_JSON, err, atomic=False)
        if friendly is None:
            raise
        raise friendly from err


def _check_request(methods: dict[str, str | os.PathLike], options: EvaluationOptions) -> None:
    """Refuse an evaluation that cannot run, before any tile is read."""
    if not methods:
        raise TdkstainError("nothing to evaluate: give --fake (and optionally --compare NAME=DIR)")
    if options.workers < 1 or options.batch_size < 1 or options.grid_tiles < 0:
        raise TdkstainError("--workers and --batch must be >= 1 and --grid-tiles >= 0")
    for name in methods:
        check_method_name(name)


def _tiles_of_every_method(results: list[MethodResult]) -> tuple[list[ImagePair], dict[str, dict[str, Path]]]:
    """The pairs whose tile every method generated, and each method's ``{stem: generated tile}``.

    Every method is scored on the same tiles, so the table compares like with
    like; each method's other tiles are noted in its pairing summary.
    """
    common = sorted(set.intersection(*({p.stem for p in r.pairing.pairs} for r in results)))
    if not common:
        raise TdkstainError("no real tile was generated by every compared method; nothing to compare")
    by_stem = {p.stem: p for p in results[0].pairing.pairs}
    pairs: list[ImagePair] = [by_stem[s] for s in common]
    fakes = {r.name: {p.stem: p.fake for p in r.pairing.pairs} for r in results}
    for r in results:
        r.pairing.not_in_every_method = sorted({p.stem for p in r.pairing.pairs} - set(common))
    return pairs, fakes


@dataclass
class _TileMeasurements:
    """What the pass over the tiles measured, before it is sorted into each method's records."""

    per_tile: list[dict]  # per pair: method -> (SSIM, PSNR, TileAnalysis)
    real_features: list[np.ndarray]  # Inception features of the real tiles, per batch
    perceptual: dict[str, dict[str, dict[str, float]]]  # method -> stem -> metric -> value


def _measure_tiles(
    pairs: list[ImagePair],
    results: list[MethodResult],
    fakes: dict[str, dict[str, Path]],
    params: ExtractionParams,
    deep: _DeepMetrics,
    options: EvaluationOptions,
) -> _TileMeasurements:
    """One pass over the tiles: knowledge work in worker processes (or here), feature networks here, batch by batch."""
    scoring = her2_scoring_params(options, params).to_dict() if options.her2 else None
    tasks = [
        (p.stem, str(p.real), [(r.name, str(fakes[r.name][p.stem])) for r in results], params.to_dict(),
         tuple(options.thresholds), options.max_pixels, scoring)
        for p in pairs
    ]
    executor = ProcessPoolExecutor(options.workers, mp_context=_pool_context()) if options.workers > 1 else None
    try:
        futures: list[Future] | None = [executor.submit(_tile_task, *t) for t in tasks] if executor else None
        real_features: list[np.ndarray] = []
        perceptual_values: dict[str, dict[str, dict[str, float]]] = {r.name: {} for r in results}
        tile_results: list[dict] = []
        progress = _progress(len(pairs), options.progress, "tiles")
        for start in range(0, len(pairs), options.batch_size):
            batch = pairs[start : start + options.batch_size]
            if futures is None:  # one process: the knowledge work of this batch, here
                tile_results.extend(_tile_task(*t) for t in tasks[start : start + len(batch)])
            if deep.inception is not None or deep.perceptual:
                _deep_batch(batch, results, fakes, deep, real_features, perceptual_values, options.max_pixels)
            progress(len(batch))
        if futures is not None:
            tile_results = [f.result() for f in futures]
    finally:
        if executor is not None:
            executor.shutdown(cancel_futures=True)
    return _TileMeasurements(tile_results, real_features, perceptual_values)


def _attach_records(results: list[MethodResult], pairs: list[ImagePair], measured: _TileMeasurements) -> None:
    """Give every method one ``TileRecord`` per pair, in the order of ``pairs``."""
    for r in results:
        for p, per_method in zip(pairs, measured.per_tile):
            ssim_value, psnr_value, analysis, her2 = per_method[r.name]
            r.records.append(
                TileRecord(p.stem, p.label, ssim_value, psnr_value, analysis, measured.perceptual[r.name].get(p.stem, {}),
                           her2)
            )


def _metrics_document(
    real_dir: Path,
    he_dir: str | os.PathLike | None,
    labels_csv: str | os.PathLike | None,
    pairs: list[ImagePair],
    params: ExtractionParams,
    params_source: str,
    deep: _DeepMetrics,
    results: list[MethodResult],
    started: float,
    options: EvaluationOptions,
) -> dict:
    """The content of ``metrics.json``: the inputs, the settings, the definitions and every method's summary."""
    return {
        "tdkstain_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": round(time.perf_counter() - started, 2),
        "real_dir": str(real_dir),
        "he_dir": str(he_dir) if he_dir is not None else None,
        "labels": str(labels_csv) if labels_csv is not None else "from file names (BCI style)",
        "tiles": len(pairs),
        "tiles_per_label": {lab: sum(p.label == lab for p in pairs) for lab in ("0", "1+", "2+", "3+", None) if any(p.label == lab for p in pairs)},
        "extraction_params": params.to_dict(),
        "extraction_params_source": params_source,
        "definitions": _definitions(deep, options.her2),
        "her2_scoring_params": her2_scoring_params(options, params).to_dict() if options.her2 else None,
        "methods": {
            r.name: {
                "fake_dir": str(r.fake_dir),
                "pairing": r.pairing.summary(),
                **r.summary,
            }
            for r in results
        },
    }


def _progress(total: int, enabled: bool, unit: str) -> Callable[[int], None]:
    """A tqdm bar on stderr (only on a terminal); returns ``advance(n)``, which closes the bar at ``total``."""
    from tqdm import tqdm

    bar = tqdm(total=total, unit=unit, disable=not (enabled and sys.stderr.isatty()), file=sys.stderr)

    def advance(n: int) -> None:
        bar.update(n)
        if bar.n >= total:
            bar.close()

    return advance


def _deep_batch(
    batch: list[ImagePair],
    results: list[MethodResult],
    fakes: dict[str, dict[str, Path]],
    deep: _DeepMetrics,
    real_features: list[np.ndarray],
    perceptual_values: dict[str, dict[str, dict[str, float]]],
    max_pixels: int | None = None,
) -> None:
    """Inception features of one batch of real and generated tiles, and their perceptual distances."""
    real_images = [_read(p.real, max_pixels) for p in batch]
    if deep.inception is not None:
        real_features.extend(deep.inception(group) for group in _stack(real_images))
    for r in results:
        fake_images = [_read(fakes[r.name][p.stem], max_pixels) for p in batch]
        for p, real, fake in zip(batch, real_images, fake_images):
            if fake.shape != real.shape:
                raise TdkstainError(
                    f"{fakes[r.name][p.stem]} is {fake.shape[1]}x{fake.shape[0]} px but its real tile {p.real} is "
                    f"{real.shape[1]}x{real.shape[0]} px; generate at the real tile's size"
                )
        if deep.inception is not None:
            r.features.extend(deep.inception(group) for group in _stack(fake_images))
        for name, metric in deep.perceptual.items():
            values = np.concatenate([metric.score_images(a, b) for a, b in zip(_stack(real_images), _stack(fake_images))])
            for p, value in zip(batch, values):
                perceptual_values[r.name].setdefault(p.stem, {})[name] = float(value)


def _mean_std(values: list[float]) -> dict:
    array = np.asarray(values, np.float64)
    return {"mean": float(array.mean()), "std": float(array.std()), "n": int(array.size)}


def _summarise(r: MethodResult, real_features: np.ndarray | None, deep: _DeepMetrics, options: EvaluationOptions) -> dict:
    psnr_values = [rec.psnr for rec in r.records]
    finite = [v for v in psnr_values if math.isfinite(v)]
    summary: dict[str, Any] = {
        "ssim": {**_mean_std([rec.ssim for rec in r.records]), "canonical": True},
        "psnr": {**(_mean_std(finite) if finite else {"mean": None, "std": None, "n": 0}),
                 "identical_pairs": len(psnr_values) - len(finite), "canonical": True},
    }
    n_real = 0 if real_features is None else len(real_features)
    n_fake = sum(len(f) for f in r.features)
    if real_features is not None and min(n_real, n_fake) < FID_MIN_TILES:
        # Every caller passes n_tiles to _load_deep_metrics, which leaves Inception out then; kept for safety.
        deep.unavailable.setdefault("fid", _too_few_tiles_for_fid(min(n_real, n_fake), FID_MIN_TILES))
        deep.unavailable.setdefault("kid", deep.unavailable["fid"])
    if real_features is not None and min(n_real, n_fake) >= FID_MIN_TILES:
        from tdkstain.metrics import fid

        fake_features = np.concatenate(r.features)
        real_stats, fake_stats = fid.FeatureStats(), fid.FeatureStats()
        real_stats.update(real_features)
        fake_stats.update(fake_features)
        summary["fid"] = {"value": float(fid.frechet_distance(real_stats, fake_stats)), "canonical": True,
                          "network": deep.descriptions.get("fid")}
        n = min(len(real_features), len(fake_features))
        kid_mean, kid_std = fid.kernel_inception_distance(real_features, fake_features, subset_size=min(1000, n))
        summary["kid"] = {"mean": float(kid_mean), "std": float(kid_std), "subset_size": min(1000, n), "canonical": True}
        if n < 2048:
            summary["fid"]["note"] = (
                f"{n} tiles: fewer than the 2048 feature dimensions, so the covariance is rank-deficient and FID is "
                "biased upwards; compare only with FID computed on the same tiles"
            )
    else:
        for metric in ("fid", "kid"):
            summary[metric] = {"available": False, "reason": deep.unavailable.get(metric, "not computed")}
    for metric in ("dists", "lpips"):
        if metric in deep.perceptual:
            summary[metric] = {**_mean_std([rec.perceptual[metric] for rec in r.records]),
                               "canonical": deep.canonical.get(metric, True), "network": deep.descriptions.get(metric)}
        else:
            summary[metric] = {"available": False, "reason": deep.unavailable.get(metric, "not computed")}
    summary["knowledge"] = aggregate([rec.analysis for rec in r.records], [rec.label for rec in r.records], options.thresholds)
    if options.her2:
        summary["her2"] = _her2_summary(r.records)
    return summary


def her2_scoring_params(options: EvaluationOptions, params: ExtractionParams) -> Any:
    """The HER2 scoring settings of an evaluation: ``options.scoring``, or the defaults at the tiles' mpp."""
    from tdkstain.scoring import CellParams, ScoringParams

    if options.scoring is not None:
        return options.scoring.validate()
    return ScoringParams(cells=CellParams(mpp=params.nuclei.mpp)).validate()


def _her2_summary(records: list[TileRecord]) -> dict:
    """Agreement of the generated with the real HER2 scores (scoring.agreement), and the mean DAB measures."""
    from tdkstain.scoring.agreement import score_agreement

    her2 = [rec.her2 for rec in records]
    agreement = score_agreement([h["real_score"] for h in her2], [h["generated_score"] for h in her2],
                                [h["real_h_score"] for h in her2], [h["generated_h_score"] for h in her2])
    out = agreement.to_dict()
    out["h_score_pairs"] = agreement.h_score_pairs
    for key in ("dab_pearson_r", "dab_kl", "iod_rel_diff"):
        values = [h[key] for h in her2 if math.isfinite(h[key])]
        out[key] = _mean_std(values) if values else {"mean": None, "std": None, "n": 0}
    abs_rel = [abs(h["iod_rel_diff"]) for h in her2 if math.isfinite(h["iod_rel_diff"])]
    out["iod_abs_rel_diff"] = _mean_std(abs_rel) if abs_rel else {"mean": None, "std": None, "n": 0}
    labelled = [(rec.label, rec.her2["real_score"]) for rec in records if rec.label is not None]
    if labelled:
        # How the scorer reads the real IHC against the dataset's own labels: what the agreement above can be trusted to.
        real_vs_label = score_agreement([lab for lab, _ in labelled], [score for _, score in labelled])
        out["real_vs_label"] = real_vs_label.to_dict()
    return out


def _definitions(deep: _DeepMetrics, her2: bool) -> dict:
    from tdkstain.scoring.agreement import DEFINITIONS as HER2_DEFINITIONS

    her2_definitions = {key: {"definition": text, "canonical": True} for key, text in HER2_DEFINITIONS.items()}
    return {
        "ssim": {"definition": SSIM_DEFINITION, "canonical": True},
        "psnr": {"definition": PSNR_DEFINITION, "canonical": True},
        "fid": {"definition": FID_DEFINITION, "canonical": deep.canonical.get("fid", False),
                "available": "fid" not in deep.unavailable},
        "kid": {"definition": KID_DEFINITION, "canonical": deep.canonical.get("kid", False),
                "available": "kid" not in deep.unavailable},
        "dists": {"definition": DISTS_DEFINITION, "canonical": deep.canonical.get("dists", False),
                  "available": "dists" not in deep.unavailable},
        "lpips": {"definition": LPIPS_DEFINITION, "canonical": deep.canonical.get("lpips", False),
                  "available": "lpips" not in deep.unavailable},
        **(her2_definitions if her2 else {}),
    }


HER2_CSV_COLUMNS = ("her2_real", "her2_generated", "h_score_real", "h_score_generated", "tumour_cells_real",
                    "tumour_cells_generated", "dab_pearson_r", "dab_kl", "iod_real", "iod_generated", "iod_rel_diff")


def _her2_cells(her2: dict | None) -> list[str]:
    """The HER2 columns of one per_image.csv row (not scorable: empty score)."""
    if her2 is None:
        return [""] * len(HER2_CSV_COLUMNS)
    number = lambda v: "" if v is None or not math.isfinite(v) else f"{v:.6g}"  # noqa: E731
    return [her2["real_score"] or "", her2["generated_score"] or "", number(her2["real_h_score"]),
            number(her2["generated_h_score"]), str(her2["real_tumour_cells"]), str(her2["generated_tumour_cells"]),
            number(her2["dab_pearson_r"]), number(her2["dab_kl"]), number(her2["iod_real"]),
            number(her2["iod_virtual"]), number(her2["iod_rel_diff"])]


def _write_per_image_csv(path: Path, results: list[MethodResult], thresholds: tuple[float, ...]) -> None:
    perceptual = sorted({k for r in results for rec in r.records for k in rec.perceptual})
    header = ["method", "stem", "label", "ssim", "psnr", *perceptual, "nuclei_real", "nuclei_generated",
              "nuclei_difference", "membrane_mae_training"]
    header += [f"membrane_mae@{t:.2f}" for t in thresholds]
    header += [f"fraction_real@{t:.2f}" for t in thresholds]
    header += [f"fraction_generated@{t:.2f}" for t in thresholds]
    her2 = any(rec.her2 for r in results for rec in r.records)
    if her2:
        header += list(HER2_CSV_COLUMNS)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for r in results:
        for rec in r.records:
            a = rec.analysis
            writer.writerow(
                [r.name, rec.stem, rec.label or "", f"{rec.ssim:.6f}", "inf" if math.isinf(rec.psnr) else f"{rec.psnr:.4f}",
                 *(f"{rec.perceptual[k]:.6f}" if k in rec.perceptual else "" for k in perceptual),
                 a.nuclei_real, a.nuclei_generated, a.nuclei_difference, f"{a.membrane_mae_training:.6f}",
                 *(f"{v:.6f}" for v in a.membrane_mae), *(f"{v:.6f}" for v in a.fraction_real),
                 *(f"{v:.6f}" for v in a.fraction_generated),
                 *(_her2_cells(rec.her2) if her2 else ())]
            )
    write_text_atomic(path, buffer.getvalue())
