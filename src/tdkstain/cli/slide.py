"""``tdkstain slide``: stain whole slides into pyramidal TIFFs (streaming, resumable, seam-free), one or a cohort."""

from __future__ import annotations

import argparse

HELP = "stain whole slides (SVS, NDPI, MRXS, TIFF, ...) into pyramidal TIFFs, one or a cohort, resumably"
DESCRIPTION = """\
Stain a whole H&E slide with a trained generator and write the virtual IHC as a
tiled, pyramidal, compressed TIFF (with its microns per pixel) that OpenSlide,
tiffslide and QuPath open, plus OUT.thumbnail.png beside it.

The slide is read (OpenSlide, else tiffslide) at the resolution the model was
trained at (its model card's mpp, or --mpp), only tiles touching tissue are
stained (the rest is filled with the generator's own rendering of the slide's
glass, blended in over the overlap), and every tile is normalised with the same
instance-norm statistics, those of the tissue as a whole (--norm global), so
that tile borders do not show. Work is kept in
OUT.tif.partial/: rerun the same command after an interruption and it continues
where it stopped; the TIFF appears under its final name only when complete.

Cohorts: give several slides, a folder (its slide files; --recursive for
subfolders, mirrored) or a CSV manifest (one row a slide: slide path[,output
name], relative paths from the CSV's folder) and an output folder --out DIR:
each slide becomes DIR/STEM.tif, and DIR/cohort.json and cohort.csv record
each slide's status (done: seconds, megapixels; failed: the reason; skipped:
already done with the same settings), rewritten after each slide. A bad slide
does not stop the others; the summary lists the failures and the exit code
is 1 when any failed. Rerun the same command: done slides are skipped, failed
and unfinished ones retried. Under torchrun each process stains its own share
(cuda:LOCAL_RANK with --device auto), on one or many nodes (docs/slides_cohorts.md).

examples:
  tdkstain slide --checkpoint runs/her2 slide.svs --out stained/slide.tif
  tdkstain slide --checkpoint latest_net_G.pth --mpp 0.5 slide.ndpi --out slide_ihc.tif --device cuda --precision bf16 --batch 16
  tdkstain slide --checkpoint runs/her2 scans/ extra.svs --out stained/
  tdkstain slide --checkpoint runs/her2 cohort.csv --out stained/
  torchrun --nproc_per_node 4 -m tdkstain slide --checkpoint runs/her2 scans/ --out stained/ --precision bf16
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "inputs", nargs="+", metavar="INPUT",
        help="H&E slides (any format OpenSlide or tiffslide reads), folders of them (files ending in "
        ".svs, .ndpi, .mrxs, .scn, .vms, .vmu, .bif, .svslide, .tif, .tiff, .btf; TIFFs tdkstain wrote are left out) "
        "or CSV manifests (.csv: slide path[,output name] a row; an optional header row slide,output)",
    )
    parser.add_argument(
        "--checkpoint", required=True,
        help="generator weights: a run folder of 'tdkstain train', a .safetensors file, or the authors' latest_net_G.pth",
    )
    parser.add_argument(
        "--out", required=True,
        help="for one slide: the output .tif (a thumbnail OUT.thumbnail.png is written beside it); for several, "
        "a folder, a CSV or an --out that does not end in .tif: the output folder (DIR/STEM.tif each, and the "
        "manifest DIR/cohort.json, DIR/cohort.csv)",
    )
    parser.add_argument(
        "--recursive", action="store_true",
        help="also take slides in subfolders of INPUT folders, mirrored under --out (default: the folder itself only)",
    )
    parser.add_argument(
        "--mpp", type=float, default=None,
        help="microns per pixel to stain at (default: the model card's, recorded at training; "
        "required for checkpoints without one, e.g. the authors' .pth: the release's BCI data is 0.5)",
    )
    parser.add_argument(
        "--slide-mpp", type=float, default=None,
        help="microns per pixel of the slide's level 0, for slides whose metadata lacks it (default: from the file)",
    )
    engine = parser.add_argument_group("staining")
    engine.add_argument("--tile", type=int, default=512, help="tile side in pixels, a multiple of the generator's downsampling (8 for TDKstain, 256 for unet_256; rounded up to fit) (default 512)")
    engine.add_argument("--overlap", type=int, default=64, help="overlap of neighbouring tiles in pixels (default 64)")
    engine.add_argument(
        "--norm", choices=("global", "kernel", "tile"), default="global",
        help="instance-norm statistics: those of the whole tissue, gathered layer by layer over --stat-tiles "
        "tiles spread over it (global, default), pooled over each tile's neighbours (kernel), or per tile "
        "(tile: naive, shows seams); no effect on generators without instance norm (pix2pix, PyramidPix2pix)",
    )
    engine.add_argument(
        "--stat-tiles", type=int, default=16,
        help="tissue tiles the global statistics are gathered over; their activations are held together, "
        "one layer at a time (default 16)",
    )
    engine.add_argument("--kernel-radius", type=int, default=1, help="neighbourhood half-width in tiles for --norm kernel (default 1)")
    engine.add_argument(
        "--stat-passes", type=int, default=1,
        help="statistics passes before staining for --norm kernel; each costs one forward pass per tissue tile (default 1)",
    )
    engine.add_argument("--batch", type=int, default=4, help="tiles per forward pass (default 4)")
    engine.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N (default auto)")
    engine.add_argument(
        "--compile", choices=("auto", "on", "off"), default="auto",
        help="run the generator through torch.compile (inductor, frozen weights): on CPU 1.3x faster in fp32 and "
        "1.7x in bf16 (benchmarks/README.md) after a one-off compilation of 10-30 s per tile shape; "
        "auto = on for CPU (a slide is always many tiles), off for CUDA, where it is not measured yet (default: auto)",
    )
    engine.add_argument(
        "--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
        help="fp32, or bf16/fp16 autocast (fp16 on CUDA only) (default fp32)",
    )
    selection = parser.add_argument_group("slide reading and tissue")
    selection.add_argument("--backend", choices=("auto", "openslide", "tiffslide"), default="auto",
                           help="slide reader (default auto: OpenSlide, then tiffslide)")
    selection.add_argument("--no-tissue-detection", action="store_true",
                           help="stain every tile, background included (default: only tiles touching tissue)")
    output = parser.add_argument_group("output")
    output.add_argument("--compression", choices=("jpeg", "deflate"), default="jpeg",
                        help="TIFF tile compression: jpeg (lossy, small) or deflate (lossless) (default jpeg)")
    output.add_argument("--jpeg-quality", type=int, default=90, help="JPEG quality 1-100 (default 90)")
    output.add_argument("--tiff-tile", type=int, default=256, help="TIFF tile side, a multiple of 16 (default 256)")
    output.add_argument("--format", dest="slide_format", choices=("tiff", "ome-tiff"), default="tiff",
                        help="tiff: generic tiled pyramid (OpenSlide, tiffslide, QuPath); ome-tiff: OME-TIFF, "
                        "the pixel size in its OME-XML and the pyramid in SubIFDs (QuPath/Bio-Formats, tiffslide; "
                        "OpenSlide 4 sees its level 0 only); same tiles, same pixels (default tiff)")
    output.add_argument("--dzi", action="store_true",
                        help="also write Deep Zoom tiles OUT.dzi + OUT_files/ beside each output (libvips dzsave; "
                        "pip install pyvips pyvips-binary) for web viewers and 'tdkstain view'")
    output.add_argument("--thumbnail-size", type=int, default=1024, help="longer side of the thumbnail PNG (default 1024)")
    output.add_argument("--force", action="store_true",
                        help="replace an existing --out file that is not a slide stained by tdkstain (refused otherwise)")
    output.add_argument("--keep-work", action="store_true",
                        help="keep OUT.tif.partial/ (stained tiles) after success, e.g. to re-encode with another quality")
    parser.add_argument("--io-workers", type=int, default=None,
                        help="threads reading slide tiles and threads encoding stained tiles (default: min(4, CPU cores))")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from tdkstain.weights import sha256_of as file_sha256, find_generator_weights
    from tdkstain.plumbing.errors import TdkstainError
    from tdkstain.cli._staining import stainer_from_args
    from tdkstain.plumbing.devices import resolve_device
    from tdkstain.plumbing.distributed import env_info
    from tdkstain.slides import SlideOptions, stain_slide
    from tdkstain.slides.cohort import check_cohort_outputs, collect_cohort, single_slide_output
    from tdkstain.slides.pipeline import check_output_path

    info = env_info()  # under torchrun: this process's rank, the job's size, its GPU (LOCAL_RANK)
    out = Path(args.out)
    single = single_slide_output(args.inputs, out)
    from tdkstain.slides.formats import check_formats, finish_formats

    check_formats(args.slide_format, args.dzi)  # --format/--dzi: before the model loads (pyvips missing, ...)
    entries = []
    if single:
        check_output_path(out, args.force)  # before loading the model: fail fast on a bad output path
        if not info.is_main:
            print(f"tdkstain slide: one slide: rank 0 stains it; rank {info.rank} has nothing to do", file=sys.stderr)
            return 0
    else:  # a cohort: every input listed and checked before the model is loaded
        entries = collect_cohort(args.inputs, recursive=args.recursive)
        check_cohort_outputs(entries, out)
    if args.mpp is not None and not 0.01 <= args.mpp <= 1000:
        raise TdkstainError(f"--mpp must be microns per pixel between 0.01 and 1000 (0.25 at 40x, 0.5 at 20x), got {args.mpp}")
    checkpoint = Path(args.checkpoint)
    weights = find_generator_weights(checkpoint) if checkpoint.is_dir() else checkpoint
    if info.enabled:  # each process its own GPU: auto or cuda -> cuda:LOCAL_RANK
        args.device = str(resolve_device(args.device, local_rank=info.local_rank))
    stainer, card = stainer_from_args(args, checkpoint, stat_passes=args.stat_passes)
    if args.compile == "auto" and stainer.device.type == "cpu":
        stainer.compile = True
    model_mpp = card.get("mpp")
    if args.mpp is None and model_mpp is None:
        raise TdkstainError(
            f"{weights}: the checkpoint records no microns per pixel (the authors' .pth never does); pass the "
            "resolution it was trained at with --mpp (the release's BCI data: --mpp 0.5)"
        )
    options = SlideOptions(
        mpp=args.mpp,
        slide_mpp=args.slide_mpp,
        backend=args.backend,
        tissue_detection=not args.no_tissue_detection,
        tiff_tile=args.tiff_tile,
        compression=args.compression,
        jpeg_quality=args.jpeg_quality,
        thumbnail_size=args.thumbnail_size,
        keep_work=args.keep_work,
        force=args.force,
        **({} if args.io_workers is None else {"io_workers": args.io_workers}),
    )
    print(f"tdkstain slide: {stainer}", file=sys.stderr)
    if not single:
        return _stain_cohort(args, stainer, entries, out, options, model_mpp, file_sha256(weights), info)
    result = stain_slide(
        stainer,
        args.inputs[0],
        out,
        model_mpp=model_mpp,
        checkpoint_id=file_sha256(weights),
        options=options,
        progress=not args.no_progress,
    )
    finish_formats(out, args.slide_format, args.dzi, result.mpp, log=lambda m: print(f"tdkstain slide: {m}", file=sys.stderr))
    timings = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in result.timings.items())
    print(f"tdkstain slide: {timings}", file=sys.stderr)
    return 0


def _stain_cohort(args: argparse.Namespace, stainer, entries, out_dir, options, model_mpp, checkpoint_id: str, info) -> int:
    """Stain this process's share of the cohort (every slide outside torchrun) and print the summary.

    Returns 0, or 1 when a slide failed or was left unfinished (rank 0: in the
    whole cohort; another rank: in its own share).
    """
    import sys

    from tdkstain.slides import stain_slide
    from tdkstain.slides.cohort import cohort_settings, run_cohort, summary_lines
    from tdkstain.slides.formats import finish_formats

    prefix = f"[rank {info.rank}/{info.world}] " if info.enabled else ""

    def log(message: str) -> None:
        print(f"{prefix}{message}", file=sys.stderr, flush=True)

    def stain(entry, out):
        log(f"{entry.slide} -> {out}")
        result = stain_slide(stainer, entry.slide, out, model_mpp=model_mpp, checkpoint_id=checkpoint_id,
                             options=options, log=log, progress=not args.no_progress)
        finish_formats(out, args.slide_format, args.dzi, result.mpp, log=log)  # --dzi (tdkstain.slides.formats)
        return result

    formats = {name: getattr(args, name) for name in ("slide_format", "dzi") if getattr(args, name, None) is not None}
    settings = cohort_settings(stainer, options, checkpoint_id=checkpoint_id, model_mpp=model_mpp, extra=formats)
    result = run_cohort(entries, out_dir, stain, settings=settings, info=info, device=str(stainer.device),
                        progress=not args.no_progress, log=log)
    for line in summary_lines(result, out_dir):
        print(f"tdkstain slide: {prefix}{line}", flush=True)
    return 0 if result.ok else 1
