"""``tdkstain view``: a folder that shows an H&E slide and its virtual IHC side by side in a browser.

:func:`build_view` writes ``OUT/``::

    index.html         the page; its settings (tile sources, sizes, microns per pixel, the HER2 map)
                       are inline JSON, so it needs no request a browser refuses under file://
    viewer.js, .css    the page's code (two OpenSeadragon viewers, panning and zooming together)
    openseadragon/     OpenSeadragon (minified JS, button images, LICENSE.txt, SOURCE.md)
    he.dzi  he_files/  Deep Zoom tiles of the H&E's level 0
    ihc.dzi ihc_files/ Deep Zoom tiles of the virtual IHC's level 0
    her2_map.png       the regions of ``tdkstain score`` coloured by score (when --her2 is given)
    view.json          what was shown, from which files, with which settings (reruns reuse tiles from it)

Tiles come from :func:`tdkstain.slides.deepzoom.write_deepzoom` (libvips
dzsave, level 0 streamed in strips: never a whole slide in memory), or are
linked from a Deep Zoom image that exists already: a ``.dzi`` given as input,
a ``.dzi`` that ``tdkstain slide --dzi`` wrote beside the slide (same size,
newer than the slide), or the tiles of the last run into the same folder
when their source file and tile settings are unchanged.

Both panes are laid out in microns (width x microns per pixel), so a point
of the tissue has the same coordinates in both although the H&E is usually
scanned finer than the network stains. Without a resolution for either image
both are assumed to show the same field (the widths are matched).

The HER2 map is drawn from ``STEM.geojson`` (the regions, in level-0 pixels
of the scored slide) and placed with ``STEM.her2.json`` (that slide's size
and microns per pixel), at most :data:`HER2_MAP_MAX_SIDE` pixels on a side.
"""

from __future__ import annotations

import html
import json
import os
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from tdkstain import __version__
from tdkstain.plumbing.atomic import atomic_path, display_name, safe_strings, write_bytes_atomic, write_text_atomic
from tdkstain.plumbing.errors import TdkstainError
from tdkstain.plumbing.limits import check_number, check_pixels
from tdkstain.slides.deepzoom import (
    DZI_OVERLAP,
    DZI_QUALITY,
    DZI_TILE_SIZE,
    DeepZoom,
    copy_deepzoom,
    dzi_path_for,
    load_pyvips,
    read_deepzoom,
    write_deepzoom,
)

#: The OpenSeadragon shipped in assets/openseadragon (see its SOURCE.md).
OPENSEADRAGON_VERSION = "6.1.1"
ASSETS = Path(__file__).resolve().parent / "assets"
#: The record of a view folder; its presence is what makes a folder safe to write into again.
VIEW_RECORD = "view.json"
#: Longer side of the HER2 map image, pixels (a 4096-px map of a 20 mm slide: 5 um per map pixel).
HER2_MAP_MAX_SIDE = 4096
#: Opacity of the HER2 map over the slides when the page opens (the page has a slider).
HER2_MAP_OPACITY = 0.6
#: Fill and outline alpha (0-255) of a region in the HER2 map.
REGION_FILL_ALPHA, REGION_LINE_ALPHA = 110, 240


@dataclass(frozen=True)
class ViewOptions:
    """How the Deep Zoom tiles are cut and what the page says.

    Attributes:
        tile_size, overlap: Deep Zoom tile side and overlap, pixels (libvips' 254 and 1).
        quality: JPEG quality of new tiles, 1..100.
        he_mpp, ihc_mpp: microns per level-0 pixel of each image, for files that do not record it.
        backend: slide reader, ``"auto"`` | ``"openslide"`` | ``"tiffslide"``.
        title: the page's title (default: the slide's name).
        force: write into a non-empty folder that is not a view tdkstain made.
    """

    tile_size: int = DZI_TILE_SIZE
    overlap: int = DZI_OVERLAP
    quality: int = DZI_QUALITY
    he_mpp: float | None = None
    ihc_mpp: float | None = None
    backend: str = "auto"
    title: str | None = None
    force: bool = False

    def __post_init__(self) -> None:
        check_number("--tile-size", self.tile_size, 16, 4096, integer=True)
        check_number("--overlap", self.overlap, 0, self.tile_size // 2, integer=True)
        check_number("--quality", self.quality, 1, 100, integer=True)
        for name, value in (("--he-mpp", self.he_mpp), ("--ihc-mpp", self.ihc_mpp)):
            if value is not None:
                check_number(name, value, 0.01, 1000, hint="microns per pixel: 0.25 at 40x, 0.5 at 20x")


@dataclass
class ViewResult:
    """What :func:`build_view` wrote: the page, both Deep Zoom images, the HER2 map, and what it reused."""

    index: Path
    he: DeepZoom
    ihc: DeepZoom
    her2_map: Path | None = None
    reused: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- the tiles


def _stamp(source: Path, options: ViewOptions) -> dict[str, Any]:
    """What the tiles of ``source`` depend on: the file (path, size, modification time) and the tile settings."""
    stat = source.stat()
    return {"source": str(source.resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns,
            "tile_size": options.tile_size, "overlap": options.overlap, "quality": options.quality}


def _sibling_deepzoom(source: Path, backend: str) -> DeepZoom | None:
    """The ``.dzi`` that ``tdkstain slide --dzi`` wrote beside ``source``, when it is newer and of the same size."""
    dzi = dzi_path_for(source)
    if not dzi.is_file() or dzi.stat().st_mtime_ns < source.stat().st_mtime_ns:
        return None
    try:
        zoom = read_deepzoom(dzi)
    except TdkstainError:
        return None
    from tdkstain.slides.reader import Slide

    with Slide(source, backend=backend) as slide:
        return zoom if slide.dimensions == (zoom.width, zoom.height) else None


def _pane_tiles(name: str, source: Path, out_dir: Path, mpp: float | None, before: dict[str, Any],
                options: ViewOptions, reused: list[str], log: Callable[[str], None]) -> tuple[DeepZoom, dict[str, Any]]:
    """``OUT/NAME.dzi`` and its tiles for one pane, made or reused; returns them and their stamp."""
    if not source.is_file():
        raise TdkstainError(f"{source}: no such file; pass a slide (SVS, TIFF, ...) or a .dzi")
    destination = out_dir / f"{name}.dzi"
    stamp = _stamp(source, options)
    previous = before.get(name)
    if isinstance(previous, dict) and previous.get("stamp") == stamp and destination.is_file():
        try:
            zoom = read_deepzoom(destination)
        except TdkstainError:
            pass
        else:
            reused.append(f"{name}.dzi (last run's tiles of {display_name(source.name)})")
            return (replace(zoom, mpp=mpp) if mpp is not None else zoom), stamp
    if source.suffix.lower() == ".dzi":
        zoom = copy_deepzoom(read_deepzoom(source), destination)
        reused.append(f"{name}.dzi (linked from {display_name(source)})")
    else:
        sibling = _sibling_deepzoom(source, options.backend)
        if sibling is not None:
            zoom = copy_deepzoom(sibling, destination)
            reused.append(f"{name}.dzi (linked from {display_name(sibling.dzi)})")
        else:
            log(f"cutting Deep Zoom tiles of {display_name(source.name)} into {name}_files/")
            zoom = write_deepzoom(source, destination, mpp=mpp, tile_size=options.tile_size, overlap=options.overlap,
                                  quality=options.quality, backend=options.backend, log=log)
    return (replace(zoom, mpp=mpp) if mpp is not None else zoom), stamp


def _world_units(he: DeepZoom, ihc: DeepZoom, log: Callable[[str], None]) -> tuple[float, float, bool]:
    """Viewport units per pixel of each pane: microns when both resolutions are known, else matched widths.

    Returns ``(he_units_per_px, ihc_units_per_px, in_microns)``.
    """
    if he.mpp is not None and ihc.mpp is not None:
        return he.mpp, ihc.mpp, True
    missing = " and ".join(name for name, zoom in (("the H&E (--he-mpp)", he), ("the IHC (--ihc-mpp)", ihc))
                           if zoom.mpp is None)
    log(f"warning: no microns per pixel for {missing}; assuming both images show the same field (widths matched)")
    return 1.0, he.width / ihc.width, False


# --------------------------------------------------------------------------- the HER2 map


def _her2_record(her2: Path, ihc: Path) -> Path:
    """``STEM.her2.json`` from ``--her2``: the file itself, or the one in a score folder (the IHC's stem first)."""
    if her2.is_file():
        return her2
    if not her2.is_dir():
        raise TdkstainError(f"--her2 {her2}: no such file or folder; pass the --out folder of tdkstain score or its STEM.her2.json")
    records = sorted(her2.glob("*.her2.json"))
    if not records:
        raise TdkstainError(f"--her2 {her2}: holds no STEM.her2.json; run tdkstain score on the slide with --out {her2}")
    if len(records) == 1:
        return records[0]
    named = [r for r in records if r.name == f"{ihc.stem}.her2.json"]
    if named:
        return named[0]
    raise TdkstainError(f"--her2 {her2}: holds {len(records)} HER2 maps and none named {ihc.stem}.her2.json; pass one "
                        f"of them: {', '.join(display_name(r.name) for r in records[:5])}")


def _load_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TdkstainError(f"{path}: missing; {what}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise TdkstainError(f"{path}: not JSON ({err}); {what}") from None


def _rings(feature: Any) -> list[list[tuple[float, float]]]:
    """The outer rings of a GeoJSON Polygon or MultiPolygon feature, as ``(x, y)`` points."""
    geometry = feature.get("geometry") or {}
    kind, coordinates = geometry.get("type"), geometry.get("coordinates") or []
    polygons = [coordinates] if kind == "Polygon" else coordinates if kind == "MultiPolygon" else []
    return [[(float(x), float(y)) for x, y, *_ in polygon[0]] for polygon in polygons if polygon]


def _classification(feature: Any) -> tuple[str, tuple[int, int, int]]:
    """A feature's class name and RGB colour (QuPath's ``classification``), grey when it has none."""
    properties = feature.get("properties")
    classification = properties.get("classification") if isinstance(properties, dict) else None
    if not isinstance(classification, dict):
        return "unclassified", (150, 150, 150)
    colour = classification.get("color")
    if not (isinstance(colour, (list, tuple)) and len(colour) >= 3
            and all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in colour[:3])):
        colour = (150, 150, 150)
    return str(classification.get("name") or "unclassified"), tuple(max(0, min(255, int(c))) for c in colour[:3])


def _draw_her2_map(features: list[Any], width: int, height: int) -> tuple[Any, float]:
    """The regions filled with their score's colour on a transparent image of the scored slide.

    Args:
        features: GeoJSON features, coordinates in level-0 pixels of a ``width x height`` slide.
    Returns:
        A Pillow RGBA image at most :data:`HER2_MAP_MAX_SIDE` on its longer side, and its pixels per slide pixel.
    """
    from PIL import Image, ImageDraw

    scale = min(1.0, HER2_MAP_MAX_SIDE / max(width, height))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    image = Image.new("RGBA", size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    for feature in features:
        _, colour = _classification(feature)
        for ring in _rings(feature):
            points = [(x * scale, y * scale) for x, y in ring]
            if len(points) >= 3:
                draw.polygon(points, fill=(*colour, REGION_FILL_ALPHA), outline=(*colour, REGION_LINE_ALPHA))
    return image, scale


def _her2_layer(her2: Path, ihc_source: Path, ihc: DeepZoom, ihc_units: float, in_microns: bool, out_dir: Path,
                log: Callable[[str], None]) -> tuple[dict[str, Any], Path]:
    """Draw ``OUT/her2_map.png`` from a score folder or record; returns the page's settings for it and its path."""
    record_path = _her2_record(her2, ihc_source)
    hint = "pass the --out folder of tdkstain score (STEM.her2.json with STEM.geojson beside it)"
    record = _load_json(record_path, hint)
    try:
        slide = record["slide"]
        width, height = (int(v) for v in slide["dimensions"])
        slide_mpp = slide.get("mpp")
        geojson = record_path.with_name(Path(str(record["files"]["geojson"])).name)
        score = record.get("slide_score") or {}
        score = score if isinstance(score, dict) else {}
    except (KeyError, TypeError, ValueError, AttributeError):
        raise TdkstainError(f"{record_path}: not a HER2 map record of tdkstain score (no slide dimensions or geojson "
                            f"file); {hint}") from None
    check_pixels(f"{record_path}: slide", height, width, hint="the record is damaged")
    collection = _load_json(geojson, hint)
    features = collection.get("features") if isinstance(collection, dict) else collection
    if not isinstance(features, list):
        raise TdkstainError(f"{geojson}: no GeoJSON features; {hint}")
    features = [feature for feature in features if isinstance(feature, dict)]
    if Path(str(slide.get("name", ""))).stem != ihc_source.stem:
        log(f"note: the HER2 map is of {display_name(str(slide.get('name')))}, shown over "
            f"{display_name(ihc_source.name)} by position in microns")
    try:
        image, _ = _draw_her2_map(features, width, height)
    except (TypeError, ValueError, AttributeError):
        raise TdkstainError(f"{geojson}: a region's geometry or colour is malformed (expected QuPath GeoJSON "
                            f"polygons with a classification colour); {hint}") from None
    target = out_dir / "her2_map.png"
    with atomic_path(target) as tmp:
        image.save(tmp, format="PNG", optimize=True)
    if in_microns and isinstance(slide_mpp, (int, float)) and slide_mpp > 0:
        world_width = width * float(slide_mpp)
    else:  # no resolution: the scored slide is taken to be the IHC shown
        world_width = ihc.width * ihc_units
    counts: dict[tuple[str, tuple[int, int, int]], int] = {}
    for feature in features:
        key = _classification(feature)
        counts[key] = counts.get(key, 0) + 1
    legend = [{"name": name, "colour": "#%02x%02x%02x" % colour, "regions": n} for (name, colour), n in sorted(counts.items())]
    layer = {
        "image": target.name, "width": image.width, "height": image.height, "worldWidth": world_width,
        "opacity": HER2_MAP_OPACITY, "visible": True, "legend": legend, "record": record_path.name,
        "score": (score.get("score") or "not scorable") if score else None,  # None: the record has no slide score
    }
    return layer, target


# --------------------------------------------------------------------------- the page


def _pane_settings(name: str, zoom: DeepZoom, units: float, source: Path) -> dict[str, Any]:
    return {"tiles": f"{name}_files/", "format": zoom.format, "overlap": zoom.overlap, "tileSize": zoom.tile_size,
            "width": zoom.width, "height": zoom.height, "mpp": zoom.mpp, "worldWidth": zoom.width * units,
            "name": source.name}


def _script_json(data: Any) -> str:
    """JSON safe inside a ``<script>`` element (no ``</script>`` or ``<!--`` can appear in it)."""
    text = json.dumps(safe_strings(data), ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _pane_label(kind: str, pane: dict[str, Any]) -> str:
    mpp = f", {pane['mpp']:.4g} µm/px" if pane["mpp"] else ""
    return (f"{kind} · {html.escape(display_name(pane['name']))} · {pane['width']:,} × {pane['height']:,} px{mpp}")


def _her2_controls(layer: dict[str, Any] | None) -> str:
    if layer is None:
        return ""
    swatches = "".join(
        f'<span><span class="swatch" style="background:{entry["colour"]}"></span>'
        f'{html.escape(entry["name"])} ({entry["regions"]})</span>'
        for entry in layer["legend"]
    )
    score = f'<span class="score">slide: HER2 {html.escape(str(layer["score"]))}</span> ' if layer["score"] else ""
    opacity = round(100 * layer["opacity"])
    return (f'<label><input type="checkbox" id="her2-toggle" checked> HER2 map</label>'
            f'<label>opacity <input type="range" id="her2-opacity" min="0" max="100" value="{opacity}"></label>'
            f'{score}<span class="legend">{swatches}</span>')


def _page(settings: dict[str, Any], title: str) -> str:
    """index.html: header (link toggle, HER2 map controls), the two panes, the licences, the settings."""
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<link rel="stylesheet" href="viewer.css">
</head>
<body>
<header>
<h1>{html.escape(title)}</h1>
<label><input type="checkbox" id="link-views" checked> pan and zoom together</label>
{_her2_controls(settings.get("her2"))}
</header>
<main>
<section class="pane"><div class="label">{_pane_label("H&amp;E", settings["he"])}</div><div id="pane-he" class="viewer"></div></section>
<section class="pane"><div class="label">{_pane_label("virtual HER2 IHC", settings["ihc"])}</div><div id="pane-ihc" class="viewer"></div></section>
</main>
<footer>Written by tdkstain {html.escape(__version__)}; research use only, not a diagnosis.
Viewer: <a href="openseadragon/SOURCE.md">OpenSeadragon {OPENSEADRAGON_VERSION}</a>
(BSD-3-Clause, <a href="openseadragon/LICENSE.txt">licence</a>).</footer>
<script id="tdkstain-view" type="application/json">{_script_json(settings)}</script>
<script src="openseadragon/openseadragon.min.js"></script>
<script src="viewer.js"></script>
</body>
</html>
"""


def _copy_assets(out_dir: Path) -> None:
    """OpenSeadragon (JS, images, licence) and the page's own code into ``out_dir``, each file atomically."""
    for source in sorted(ASSETS.rglob("*")):
        if source.is_file():
            target = out_dir / source.relative_to(ASSETS)
            data = source.read_bytes()
            if not (target.is_file() and target.read_bytes() == data):
                write_bytes_atomic(target, data)


def _check_out_dir(out_dir: Path, force: bool) -> dict[str, Any]:
    """Refuse a file or a foreign non-empty folder at ``out_dir`` (unless ``force``); the last run's record, or {}."""
    if out_dir.exists() and not out_dir.is_dir():
        raise TdkstainError(f"--out {out_dir}: is a file; tdkstain view writes a folder there. Choose another --out.")
    record = out_dir / VIEW_RECORD
    if record.is_file():
        try:
            before = json.loads(record.read_text(encoding="utf-8"))
            return before if isinstance(before, dict) else {}
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return {}
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise TdkstainError(f"--out {out_dir}: holds files and is not a view tdkstain made; pass --force to write into "
                            "it anyway, or choose an empty or new folder")
    return {}


def build_view(
    he: str | os.PathLike,
    ihc: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    her2: str | os.PathLike | None = None,
    options: ViewOptions = ViewOptions(),
    log: Callable[[str], None] = lambda message: print(message, file=sys.stderr),
) -> ViewResult:
    """Write the viewer folder (see the module docstring) for an H&E slide and its virtual IHC.

    Args:
        he: the H&E slide (any format the slide reader opens) or a ``.dzi``.
        ihc: the virtual IHC (``tdkstain slide``'s TIFF or OME-TIFF) or a ``.dzi``.
        out_dir: the folder to write (created; rerunning into it reuses unchanged tiles).
        her2: ``tdkstain score``'s output folder, or its ``STEM.her2.json``, for the HER2 map overlay.
        options: :class:`ViewOptions`.
        log: receives one-line messages.
    Returns:
        :class:`ViewResult`.
    Raises:
        TdkstainError: pyvips missing (how to install it), an unreadable input, a damaged score record,
            or an ``out_dir`` that is a file or someone else's folder.
    """
    he, ihc, out_dir = Path(he), Path(ihc), Path(out_dir)
    before = _check_out_dir(out_dir, options.force)
    if he.suffix.lower() != ".dzi" or ihc.suffix.lower() != ".dzi":
        load_pyvips()  # before any work: say how to install it
    out_dir.mkdir(parents=True, exist_ok=True)
    reused: list[str] = []
    he_zoom, he_stamp = _pane_tiles("he", he, out_dir, options.he_mpp, before, options, reused, log)
    ihc_zoom, ihc_stamp = _pane_tiles("ihc", ihc, out_dir, options.ihc_mpp, before, options, reused, log)
    he_units, ihc_units, in_microns = _world_units(he_zoom, ihc_zoom, log)
    settings: dict[str, Any] = {
        "he": _pane_settings("he", he_zoom, he_units, he),
        "ihc": _pane_settings("ihc", ihc_zoom, ihc_units, ihc),
        "units": "µm" if in_microns else "H&E pixels",
        "her2": None,
    }
    map_path = None
    if her2 is not None:
        settings["her2"], map_path = _her2_layer(Path(her2), ihc, ihc_zoom, ihc_units, in_microns, out_dir, log)
    elif (out_dir / "her2_map.png").is_file():
        (out_dir / "her2_map.png").unlink()  # a map of an earlier run would otherwise sit there unexplained
    _copy_assets(out_dir)
    title = options.title or f"{he.stem}: H&E and virtual HER2 IHC"
    index = out_dir / "index.html"
    write_text_atomic(index, _page(settings, title))
    record = {
        "what": "tdkstain view: H&E and virtual HER2 IHC side by side (open index.html)",
        "tdkstain": __version__,
        "openseadragon": OPENSEADRAGON_VERSION,
        "he": {"stamp": he_stamp, "dzi": {k: v for k, v in asdict(he_zoom).items() if k != "dzi"}},
        "ihc": {"stamp": ihc_stamp, "dzi": {k: v for k, v in asdict(ihc_zoom).items() if k != "dzi"}},
        "her2": None if her2 is None else str(Path(her2).resolve()),
        "options": {k: v for k, v in asdict(options).items() if k != "force"},
    }
    write_text_atomic(out_dir / VIEW_RECORD, json.dumps(safe_strings(record), indent=2))
    for line in reused:
        log(f"reused {line}")
    return ViewResult(index=index, he=he_zoom, ihc=ihc_zoom, her2_map=map_path, reused=reused)
