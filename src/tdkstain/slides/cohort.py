"""Cohorts: many slides into one output folder, with a manifest, idempotent reruns and shares of a torchrun job.

What ``tdkstain slide`` runs when it is given several slides, a folder or a
CSV manifest (one slide with ``--out FILE.tif`` is still
:func:`tdkstain.slides.pipeline.stain_slide` alone, unchanged).

Inputs (:func:`collect_cohort`). Each slide becomes a :class:`CohortEntry`
with an output name, a path relative to the output folder:

- a slide file named on the command line: ``STEM.tif``;
- a folder: its slide files (names ending in one of :data:`COHORT_SUFFIXES`),
  ``STEM.tif`` each. Not recursive unless ``recursive`` (``--recursive``),
  which also takes subfolders and mirrors them (``sub/STEM.tif``): a slide
  folder often holds other things (MRXS data folders, exports, earlier
  outputs) and walking a whole share can take long, so going deeper is
  asked for. Hidden entries, work folders (``*.partial``), the status folder
  and TIFFs that tdkstain wrote are left out, so an output folder inside the
  input folder is never taken for slides;
- a CSV manifest (a ``.csv`` file): one slide a row, ``slide path[,output
  name]``. A first row naming its columns (``slide`` or ``path``; ``output``
  or ``name``) is a header, and then other columns are ignored; without one
  a row has one or two cells. Blank rows and rows starting with ``#`` are
  skipped. Relative slide paths are relative to the CSV's folder and may
  point anywhere (``../other/a.svs``, absolute paths): slides often live on
  another share. Output names must stay inside the output folder (no
  absolute path, no ``..``); ``.tif`` is added when missing. A row whose
  slide file is missing becomes a failed slide and the others run (a
  spreadsheet of 500 slides should not wait for one); a missing path typed
  on the command line is an error before any work.

Two inputs that would write the same output (compared case-insensitively,
as macOS and Windows file systems do) are an error before any work, naming
both and the fix (a CSV manifest with distinct output names, or separate
output folders): renaming silently (``a-2.tif``) would tie a slide's output
name to which other slides happen to be in the cohort, and a later rerun with
one slide more could restain under other names. So is an output that would
replace one of the input slides.

Status and manifest. The process that handles a slide writes its status
file ``OUT/cohort-status/NAME-HASH.json`` (atomically; no file is written by
two processes): ``running``, then ``done`` (output, seconds, megapixels,
who stained it: rank, host, device), ``failed`` (the one-line reason) or
``interrupted``; a rerun writes ``skipped`` for a slide whose output is
already complete. Rank 0 (the only process, outside torchrun) merges the
status files into ``OUT/cohort.json`` and ``OUT/cohort.csv`` after each of
its slides and once every process has finished; a slide not reached yet in
this run shows as ``pending`` with its earlier status. Per-slide files rather
than per-rank shards: a rerun may use another number of processes, and so
another split of the slides, and a slide's record must not depend on which
rank wrote it; a process that dies leaves the status of every slide it
finished. Each process also writes ``cohort-status/rank-R.json``: its share
and what it did with each slide.

Skipped (already done). A slide is skipped when its status file says done
(or skipped) with the same settings (:func:`settings_key`: checkpoint hash,
resolution and every engine, reading and output option that changes the
output file), the same slide file (name, size in bytes and modification
time: a moved folder keeps them, a changed scan does not) and its output is
there, of the recorded size, and a slide tdkstain wrote. Everything else is
stained (a failed slide is retried; an interrupted one resumes from its work
folder ``NAME.tif.partial/``). Delete an output to have it stained again.

Shares (:func:`assign_shares`). Under torchrun every process lists the
same cohort and takes its own share, without talking to the others: the
slides sorted by output name, assigned largest first to the least-loaded
process (longest-processing-time first, ties to the lower rank; within 4/3
of the best split, Graham 1969), sizes being file bytes (with an MRXS
slide's data folder). Bytes, not pixels: the work is the tissue tiles, and
compressed scans grow with tissue while white glass compresses to almost
nothing; and a ``stat`` costs nothing while reading headers of hundreds of
slides on a network share does. The split is over the whole cohort, done or
not, so processes that start at different moments of a rerun cannot disagree
about it. Processes of one job join a gloo group (TCP, no GPU needed) only to
agree on a run id and to wait for each other at the end; when that fails each
process still works through its share, and rank 0 writes the manifest
without waiting (with a warning).
"""

from __future__ import annotations

import csv
import datetime
import hashlib
import heapq
import io
import json
import os
import socket
import sys
import traceback
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from tdkstain.plumbing.atomic import display_name, os_error, read_error, safe_strings, write_text_atomic
from tdkstain.plumbing.files import list_files, named_path_exists
from tdkstain.plumbing.distributed import DistInfo
from tdkstain.plumbing.errors import TdkstainError
from tdkstain.slides.pipeline import SlideResult, is_stained_slide
from tdkstain.slides.reader import SLIDE_SUFFIXES, TIFF_SUFFIXES

__all__ = [
    "COHORT_SUFFIXES",
    "MANIFEST_CSV",
    "MANIFEST_JSON",
    "STATUS_DIR",
    "CohortEntry",
    "CohortRun",
    "assign_shares",
    "check_cohort_outputs",
    "cohort_settings",
    "collect_cohort",
    "folder_slides",
    "read_cohort_csv",
    "run_cohort",
    "settings_key",
    "single_slide_output",
    "summary_lines",
    "work_bytes",
]

#: Names of the files a folder input takes as slides: the vendor formats and TIFF.
COHORT_SUFFIXES: tuple[str, ...] = SLIDE_SUFFIXES + TIFF_SUFFIXES
#: The merged manifest in the output folder (JSON: everything; CSV: one row a slide).
MANIFEST_JSON = "cohort.json"
MANIFEST_CSV = "cohort.csv"
#: The folder of per-slide status files and per-process records, in the output folder.
STATUS_DIR = "cohort-status"
#: Bump when the layout of the status files or the manifest changes.
MANIFEST_FORMAT = 1
#: How long a finished process waits for the others at the end (seconds): 7 days, longer than any batch job.
WAIT_SECONDS = 7 * 24 * 3600
#: Characters of a failure's reason kept in the manifest.
MAX_REASON = 1000
#: Columns of cohort.csv.
CSV_COLUMNS = ("output", "slide", "status", "seconds", "megapixels", "rank", "host", "reason")
#: Header cells naming a CSV manifest's slide column and its output column.
_SLIDE_HEADERS = {"slide", "slide_path", "slide path", "path", "file"}
_OUTPUT_HEADERS = {"output", "output_name", "output name", "out", "name"}
#: Statuses that mean the slide's output is complete.
_COMPLETE = ("done", "skipped")


@dataclass(frozen=True)
class CohortEntry:
    """One slide of a cohort.

    Attributes:
        slide: the slide file, as given (relative to the working folder) or joined to a CSV's folder.
        output: its output, relative to the output folder, ending in ``.tif`` or ``.tiff``.
        origin: where it was named, for messages: ``"command line"``, ``"folder X"``, ``"X.csv line N"``.
        problem: why it cannot be stained, known before trying (a CSV row naming a missing file), else None.
    """

    slide: Path
    output: Path
    origin: str
    problem: str | None = None

    @property
    def name(self) -> str:
        """The output name with ``/`` separators: the entry's key in the manifest."""
        return self.output.as_posix()


# --------------------------------------------------------------------------- inputs


def single_slide_output(inputs: Sequence[str | os.PathLike], out: str | os.PathLike) -> bool:
    """True for the one-slide form ``tdkstain slide SLIDE --out FILE.tif``: stained by ``stain_slide`` alone.

    One input that is neither a folder nor a ``.csv``, and ``out`` ending in
    ``.tif``/``.tiff`` and not an existing folder. Anything else is a cohort
    with ``out`` an output folder; several inputs with ``--out FILE.tif`` are
    refused with the fix.
    """
    target = Path(out)
    names_a_file = target.suffix.lower() in (".tif", ".tiff") and not target.is_dir()
    if len(inputs) == 1:
        source = Path(inputs[0])
        if not source.is_dir() and source.suffix.lower() != ".csv":
            return names_a_file
    if names_a_file:
        what = f"{len(inputs)} inputs were given" if len(inputs) > 1 else f"{inputs[0]} is a folder or CSV of slides"
        raise TdkstainError(
            f"--out {out} names one file, but {what}; pass an output folder such as "
            f"--out {target.with_suffix('')}/ (each slide becomes FOLDER/STEM.tif)"
        )
    return False


def folder_slides(folder: Path, recursive: bool = False) -> list[Path]:
    """Slide files in ``folder`` (and its subfolders when ``recursive``; links to folders are not followed), sorted.

    A slide file: a name ending in one of :data:`COHORT_SUFFIXES`. Left out:
    hidden entries, ``*.partial`` work folders, :data:`STATUS_DIR`, and TIFFs
    that tdkstain wrote (earlier outputs). A folder that cannot be listed is
    a TdkstainError naming it.
    """

    def skip(path: Path) -> bool:
        if path.name.endswith(".partial") or path.name == STATUS_DIR:
            return True
        return path.suffix.lower() in TIFF_SUFFIXES and is_stained_slide(path)

    return list_files(folder, COHORT_SUFFIXES, recursive=recursive, skip=skip)


def _output_name(text: str, where: str) -> Path:
    """A CSV row's output name as a relative ``.tif`` path inside the output folder (TdkstainError otherwise)."""
    name = Path(text.strip())
    if not text.strip() or name.is_absolute() or ".." in name.parts or name.name in ("", "."):
        raise TdkstainError(
            f"{where}: output name {text!r} must be a file name inside the output folder (no absolute path, "
            "no '..'), e.g. case1.tif or siteA/case1.tif"
        )
    suffix = name.suffix.lower()
    if suffix in COHORT_SUFFIXES and suffix not in (".tif", ".tiff"):
        name = name.with_suffix(".tif")  # "case1.svs" -> "case1.tif"
    elif suffix not in (".tif", ".tiff"):
        name = name.with_name(name.name + ".tif")
    if name.parts[0] == STATUS_DIR:
        raise TdkstainError(f"{where}: output name {text!r} is reserved for the cohort's own records; choose another")
    return name


def read_cohort_csv(path: Path) -> list[CohortEntry]:
    """The slides a CSV manifest lists (format: the module docstring), in its row order.

    Raises TdkstainError naming the file and line for an unreadable file, a
    row without a slide path, an output name outside the output folder, or a
    row of more than two cells without a header; a row whose slide file is
    missing gives an entry with its ``problem`` set.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")  # utf-8-sig: spreadsheets often start the file with a BOM
    except UnicodeDecodeError:
        raise TdkstainError(f"{path}: not UTF-8 text; save the manifest as CSV (UTF-8)") from None
    except OSError as err:
        raise read_error(path, err) from err
    reader = csv.reader(io.StringIO(text, newline=""))
    slide_column, output_column = 0, 1
    header: list[str] | None = None
    entries: list[CohortEntry] = []
    for row in reader:
        where = f"{path} line {reader.line_num}"
        cells = [cell.strip() for cell in row]
        if not any(cells) or cells[0].startswith("#"):
            continue
        if header is None and not entries and any(c.casefold() in _SLIDE_HEADERS for c in cells):
            header = [c.casefold() for c in cells]
            slide_column = next(i for i, c in enumerate(header) if c in _SLIDE_HEADERS)
            output_column = next((i for i, c in enumerate(header) if c in _OUTPUT_HEADERS), -1)
            continue
        if header is None and len(cells) > 2:
            raise TdkstainError(
                f"{where}: {len(cells)} cells; a manifest without a header row has the slide path and optionally the "
                "output name. Add a header row (slide,output,...) to keep other columns"
            )
        slide_text = cells[slide_column] if slide_column < len(cells) else ""
        if not slide_text:
            raise TdkstainError(f"{where}: no slide path in this row; fill it in or delete the row")
        slide = Path(slide_text).expanduser()
        if not slide.is_absolute():
            slide = path.parent / slide
        output_text = cells[output_column] if 0 <= output_column < len(cells) else ""
        output = _output_name(output_text, where) if output_text else Path(slide.stem + ".tif")
        problem = None
        if not named_path_exists(slide):
            problem = f"{slide}: no such slide file ({where}); fix the path (relative paths are relative to the CSV's folder)"
        elif slide.is_dir():
            problem = f"{slide}: is a folder ({where}); a manifest row names one slide file"
        entries.append(CohortEntry(slide, output, where, problem))
    if not entries:
        raise TdkstainError(f"{path}: lists no slides; one row a slide: slide path[,output name]")
    return entries


def collect_cohort(inputs: Sequence[str | os.PathLike], recursive: bool = False) -> list[CohortEntry]:
    """The cohort the command-line inputs name (slide files, folders, CSV manifests), sorted by output name.

    Raises TdkstainError, before any work, for a missing path, a folder
    without slides, a bad CSV manifest, or two slides that would write the
    same output. The same slide named twice for the same output counts once.
    """
    found: list[CohortEntry] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            slides = folder_slides(path, recursive)
            if not slides:
                hint = "" if recursive else " (pass --recursive to look into subfolders)"
                raise TdkstainError(f"{path}: no slide files ({', '.join(COHORT_SUFFIXES)}) in this folder{hint}")
            for slide in slides:
                output = slide.relative_to(path).with_suffix(".tif") if recursive else Path(slide.stem + ".tif")
                found.append(CohortEntry(slide, output, f"folder {path}"))
        elif path.suffix.lower() == ".csv" and path.is_file():
            found.extend(read_cohort_csv(path))
        elif named_path_exists(path):
            found.append(CohortEntry(path, Path(path.stem + ".tif"), "command line"))
        else:
            raise TdkstainError(f"{item}: no such slide, folder or CSV manifest")
    owners: dict[str, CohortEntry] = {}
    unique: list[CohortEntry] = []
    for entry in found:
        key = entry.name.casefold()
        other = owners.get(key)
        if other is None:
            owners[key] = entry
            unique.append(entry)
        elif os.path.abspath(other.slide) != os.path.abspath(entry.slide):
            raise TdkstainError(
                f"{other.slide} ({other.origin}) and {entry.slide} ({entry.origin}) would both be written to "
                f"{entry.name}; give them distinct output names in a CSV manifest (slide,output), rename one, or "
                "stain them into different --out folders"
            )
    return sorted(unique, key=lambda e: (e.name.casefold(), e.name))


def check_cohort_outputs(entries: Sequence[CohortEntry], out_dir: Path) -> None:
    """Fail early (TdkstainError) when ``out_dir`` cannot be a writable output folder, or an output would
    replace one of the input slides (``--out`` pointing at the slides' own folder with TIFF slides)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise TdkstainError(f"--out {out_dir}: is a file; a cohort is written into a folder: pass a folder name")
    probe = out_dir
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise TdkstainError(f"--out {out_dir}: cannot write to the folder {probe} (not writable); choose another --out")
    slides = {os.path.realpath(e.slide): e for e in entries}
    for entry in entries:
        source = slides.get(os.path.realpath(out_dir / entry.output))
        if source is not None:
            raise TdkstainError(
                f"{source.slide}: its output {out_dir / entry.output} would replace this input slide; "
                "choose an --out folder other than the slides' own"
            )


# --------------------------------------------------------------------------- settings and shares


def cohort_settings(stainer: Any, options: Any, *, checkpoint_id: str, model_mpp: float | None,
                    extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything that changes a slide's output file, as JSON-ready data (:func:`settings_key` hashes it).

    ``stainer``: the :class:`~tdkstain.inference.Stainer` (its device *type*
    only: ``cuda:0`` and ``cuda:1`` give the same output, so the ranks of a
    job agree); ``options``: the :class:`~tdkstain.slides.SlideOptions`, every
    field but those that do not change the output (``keep_work``, ``force``,
    ``io_workers``), so an option added there later counts without a change here; ``extra``: the
    caller's own options that change what is written (e.g. the CLI's output formats), JSON-ready.
    """
    ignored = {"keep_work", "force", "io_workers"}
    return {
        "checkpoint": checkpoint_id,
        "model_mpp": model_mpp,
        "options": {k: v for k, v in sorted(asdict(options).items()) if k not in ignored},
        "stainer": {
            "tile": stainer.tile, "overlap": stainer.overlap, "batch": stainer.batch, "norm": stainer.norm,
            "kernel_radius": stainer.kernel_radius, "stat_passes": stainer.stat_passes, "stat_tiles": stainer.stat_tiles,
            "blend_margin": stainer.blend_margin, "precision": stainer.precision, "device": stainer.device.type,
            "compile": bool(stainer.compile),
        },
        "extra": dict(sorted((extra or {}).items())),
    }


def settings_key(settings: dict[str, Any]) -> str:
    """A 16-hex-digit digest of :func:`cohort_settings` (canonical JSON, SHA-256)."""
    text = json.dumps(settings, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def work_bytes(slide: Path) -> int:
    """The work estimate of a slide: its file's bytes, plus an MRXS slide's data folder (``STEM/``); 0 when missing."""
    try:
        total = os.stat(slide).st_size
    except OSError:
        return 0
    data = slide.with_suffix("")
    if slide.suffix.lower() == ".mrxs" and data.is_dir():
        try:
            with os.scandir(data) as it:
                total += sum(e.stat().st_size for e in it if e.is_file())
        except OSError:
            pass
    return total


def assign_shares(weights: Sequence[int], world: int) -> list[int]:
    """The process (rank ``0..world-1``) of each item: largest first, each to the least-loaded rank so far.

    Longest-processing-time-first (Graham 1969: the largest load is within
    ``4/3 - 1/(3 world)`` of the best split). Deterministic: items of equal
    weight in their order, ties between ranks to the lower rank. Every item
    gets exactly one rank. ``weights``: non-negative work estimates (bytes);
    each counts at least 1, so that items of weight 0 are spread too.
    """
    if world < 1:
        raise ValueError(f"world must be >= 1, got {world}")
    order = sorted(range(len(weights)), key=lambda i: (-int(weights[i]), i))
    loads = [(0, rank) for rank in range(world)]  # a heap of (load, rank)
    ranks = [0] * len(weights)
    for i in order:
        load, rank = heapq.heappop(loads)
        ranks[i] = rank
        heapq.heappush(loads, (load + max(1, int(weights[i])), rank))
    return ranks


# --------------------------------------------------------------------------- status files


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _status_path(out_dir: Path, entry: CohortEntry) -> Path:
    """``OUT/cohort-status/STEM-HASH.json``: readable, and distinct for names that differ only in folders or case."""
    digest = hashlib.sha1(entry.name.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    return out_dir / STATUS_DIR / f"{entry.output.stem}-{digest}.json"


def _read_json(path: Path) -> dict[str, Any] | None:
    """A status or record file, or None when absent or unreadable (a rerun then treats the slide as not done)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    write_text_atomic(path, json.dumps(safe_strings(data), indent=1, default=str) + "\n")


def _identity(slide: Path) -> dict[str, Any] | None:
    """What makes a slide file "the same" across runs: its name, size in bytes and modification time (ns)."""
    try:
        stat = os.stat(slide)
    except OSError:
        return None
    return {"name": slide.name, "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _one_line(text: str) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= MAX_REASON else line[: MAX_REASON - 3] + "..."


def _reason(err: BaseException) -> str:
    """A failure as one line: a TdkstainError's message (it names the file and the fix), else the type and message."""
    if isinstance(err, TdkstainError):
        return _one_line(str(err))
    if isinstance(err, OSError):
        friendly = os_error(err)
        if friendly is not None:
            return _one_line(str(friendly))
    return _one_line(f"{type(err).__name__}: {err}")


# --------------------------------------------------------------------------- the processes of a job


class _Peers:
    """The other processes of a torchrun job, joined over gloo only to agree on a run id and to wait at the end.

    Joining is optional: when it fails (a firewall, a name that does not
    resolve), each process still stains its share and rank 0 does not wait.
    """

    def __init__(self, info: DistInfo, log: Callable[[str], None]) -> None:
        self.info = info
        self.log = log
        self.joined = False
        self.owned = False
        if not info.enabled:
            return
        import torch.distributed as dist

        try:
            if not dist.is_initialized():
                dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=WAIT_SECONDS))
                self.owned = True
            self.joined = True
        except Exception as err:  # noqa: BLE001 (any failure to join leaves each process working alone)
            log(
                f"warning: could not join the other {info.world - 1} process(es) over gloo ({_reason(err)}); each "
                "process stains its own share, and rank 0 writes the manifest without waiting for the others "
                "(set GLOO_SOCKET_IFNAME to the network interface the nodes share)"
            )

    def run_id(self) -> str:
        """One id for this run, the same in every process of the job."""
        token = uuid.uuid4().hex
        if self.joined:
            import torch.distributed as dist

            box = [token]
            try:
                dist.broadcast_object_list(box, src=0)
                return str(box[0])
            except Exception as err:  # noqa: BLE001 (the group is broken: carry on as if never joined)
                self.joined = False
                self.log(f"warning: the processes could not agree on a run id ({_reason(err)}); using torchrun's")
        if self.info.enabled:  # not joined: what torchrun set for the whole job
            keys = ("TORCHELASTIC_RUN_ID", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RESTART_COUNT", "WORLD_SIZE")
            return hashlib.sha256("|".join(os.environ.get(k, "") for k in keys).encode()).hexdigest()[:32]
        return token

    def wait_for_all(self) -> str | None:
        """Wait until every process has finished its share; None, or why not (a process that failed or hung)."""
        if not self.info.enabled:
            return None
        if not self.joined:
            return "the processes could not join, so rank 0 did not wait for the others"
        import torch.distributed as dist

        try:
            if dist.get_backend() == "gloo":
                dist.monitored_barrier(timeout=datetime.timedelta(seconds=WAIT_SECONDS), wait_all_ranks=True)
            else:
                dist.barrier()
        except Exception as err:  # noqa: BLE001
            return _reason(err)
        return None

    def leave(self) -> None:
        if self.owned:
            import torch.distributed as dist

            try:
                dist.destroy_process_group()
            except Exception:  # noqa: BLE001 (a peer already gone: nothing left to close cleanly)
                pass


# --------------------------------------------------------------------------- running


@dataclass
class CohortRun:
    """What :func:`run_cohort` did in this process.

    Attributes:
        rank, world: this process of ``world`` (0 of 1 outside torchrun).
        share: output names of this process's share.
        done, skipped, failed: output names of its share by what happened to them this run.
        manifest: the merged manifest (rank 0; None elsewhere): ``cohort.json``'s content.
        incomplete: why the manifest may miss other processes' work (rank 0), else None.
    """

    rank: int
    world: int
    share: list[str] = field(default_factory=list)
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    manifest: dict[str, Any] | None = None
    incomplete: str | None = None

    @property
    def ok(self) -> bool:
        """No slide failed or was left unfinished (in the manifest on rank 0; in its own share elsewhere)."""
        if self.manifest is not None:
            counts = self.manifest["counts"]
            return not any(counts[s] for s in ("failed", "interrupted", "running", "pending"))
        return not self.failed


class _Cohort:
    """The status files, the process record and the manifest of one run in one process."""

    def __init__(self, entries: Sequence[CohortEntry], out_dir: Path, settings: dict[str, Any], info: DistInfo,
                 run_id: str, device: str) -> None:
        self.entries = list(entries)
        self.out_dir = out_dir
        self.settings = settings
        self.key = settings_key(settings)
        self.info = info
        self.run_id = run_id
        self.who = {"rank": info.rank, "world": info.world, "host": socket.gethostname(), "pid": os.getpid(),
                    "device": device}
        self.record: dict[str, Any] = {"format": MANIFEST_FORMAT, "run": run_id, **self.who, "started": _now(),
                                       "finished": None, "share": [], "slides": {}}
        self._cache: dict[Path, tuple[tuple[int, int, int], dict[str, Any] | None]] = {}

    # ----- one slide

    def previous(self, entry: CohortEntry) -> dict[str, Any] | None:
        """The slide's status file, read again only when it was replaced (another inode, size or time: every write
        is an atomic replace), so that rank 0's merge after each slide costs a stat per slide, not a read."""
        path = _status_path(self.out_dir, entry)
        try:
            stat = path.stat()
        except OSError:
            return None
        key = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        cached = self._cache.get(path)
        if cached is None or cached[0] != key:
            cached = (key, _read_json(path))
            self._cache[path] = cached
        return cached[1]

    def is_complete(self, entry: CohortEntry, status: dict[str, Any] | None) -> bool:
        """The slide's output is there, complete, for this slide file and these settings (module docstring)."""
        if not status or status.get("status") not in _COMPLETE or status.get("settings") != self.key:
            return False
        if status.get("identity") is None or status.get("identity") != _identity(entry.slide):
            return False
        out = self.out_dir / entry.output
        try:
            size = out.stat().st_size
        except OSError:
            return False
        return size == status.get("output_bytes") and is_stained_slide(out)

    def write_status(self, entry: CohortEntry, status: str, **fields: Any) -> dict[str, Any]:
        data = {"format": MANIFEST_FORMAT, "output": entry.name, "slide": str(entry.slide), "origin": entry.origin,
                "status": status, "run": self.run_id, "settings": self.key, "updated": _now(), **self.who, **fields}
        _write_json(_status_path(self.out_dir, entry), data)
        self.record["slides"][entry.name] = status
        self.record["updated"] = data["updated"]
        _write_json(self.record_path(self.info.rank), self.record)
        return data

    # ----- the process record and the manifest

    def record_path(self, rank: int) -> Path:
        return self.out_dir / STATUS_DIR / f"rank-{rank}.json"

    def remove_stale_records(self) -> None:
        """Records of ranks this run does not have (an earlier run with more processes)."""
        for path in (self.out_dir / STATUS_DIR).glob("rank-*.json"):
            rank = path.stem[len("rank-"):]
            if not rank.isdigit() or int(rank) >= self.info.world:
                path.unlink(missing_ok=True)

    def manifest(self, incomplete: str | None = None) -> dict[str, Any]:
        """The merged view of every slide's status file (what rank 0 writes as cohort.json)."""
        slides = []
        counts = {s: 0 for s in ("done", "skipped", "failed", "interrupted", "running", "pending")}
        for entry in self.entries:
            status = self.previous(entry) or {}
            current = status.get("run") == self.run_id and status.get("status") in counts
            row = {"output": entry.name, "slide": str(entry.slide), "origin": entry.origin,
                   "status": status["status"] if current else "pending"}
            if status and not current:
                row["previous"] = status.get("status")
            for key in ("reason", "seconds", "megapixels", "size", "output_bytes", "stained_by", "rank", "host",
                        "device", "updated"):
                if key in status:
                    row[key] = status[key]
            counts[row["status"]] += 1
            slides.append(row)
        records = (_read_json(self.record_path(k)) for k in range(self.info.world))
        ranks = [r for r in records if r and r.get("run") == self.run_id]
        return {
            "format": MANIFEST_FORMAT, "updated": _now(), "output_folder": str(self.out_dir), "run": self.run_id,
            "world_size": self.info.world, "settings": self.key, "settings_detail": self.settings, "counts": counts,
            "incomplete": incomplete, "slides": slides, "ranks": ranks,
        }

    def write_manifest(self, incomplete: str | None = None) -> dict[str, Any]:
        data = self.manifest(incomplete)
        _write_json(self.out_dir / MANIFEST_JSON, data)
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for row in data["slides"]:
            writer.writerow([row.get(c, "") if row.get(c) is not None else "" for c in CSV_COLUMNS])
        write_text_atomic(self.out_dir / MANIFEST_CSV, text.getvalue())
        return data


def _slide_bar(total: int, info: DistInfo, progress: bool) -> Any:
    from tqdm import tqdm

    desc = f"slides (rank {info.rank}/{info.world})" if info.enabled else "slides"
    return tqdm(total=total, desc=desc, unit="slide", disable=not progress or not sys.stderr.isatty(), file=sys.stderr)


def run_cohort(
    entries: Sequence[CohortEntry],
    out_dir: str | os.PathLike,
    stain: Callable[[CohortEntry, Path], SlideResult],
    *,
    settings: dict[str, Any],
    info: DistInfo | None = None,
    device: str = "",
    progress: bool = True,
    log: Callable[[str], None] = lambda message: print(message, file=sys.stderr),
) -> CohortRun:
    """Stain this process's share of a cohort into ``out_dir``; rank 0 writes the manifest.

    Args:
        entries: the cohort (:func:`collect_cohort`), the same list in every process.
        out_dir: the output folder; each entry's output is ``out_dir / entry.output``.
        stain: stains one slide into the given output path (``stain_slide`` with the job's
            stainer and options); its exceptions become the slide's failure, one line.
        settings: :func:`cohort_settings` of the job (slides done with other settings are redone).
        info: this process's place in a torchrun job (:func:`tdkstain.plumbing.distributed.env_info`; None: alone).
        device: the device this process stains on, for the records.
        progress: a bar over the slides when stderr is a terminal.
        log: receives one-line messages.
    Returns:
        :class:`CohortRun`. A KeyboardInterrupt is recorded (``interrupted``) and raised again.
    """
    out_dir = Path(out_dir)
    info = info or DistInfo()
    (out_dir / STATUS_DIR).mkdir(parents=True, exist_ok=True)
    peers = _Peers(info, log)
    try:
        cohort = _Cohort(entries, out_dir, settings, info, peers.run_id(), device)
        ranks = assign_shares([work_bytes(e.slide) for e in entries], info.world)
        mine = [e for e, r in zip(entries, ranks) if r == info.rank]
        run = CohortRun(info.rank, info.world, share=[e.name for e in mine])
        where = f" on {device}" if device else ""
        log(f"{len(mine)} of {len(entries)} slide(s) in this process's share{where} -> {out_dir}" if info.enabled
            else f"{len(entries)} slide(s){where} -> {out_dir}")
        cohort.record["share"] = run.share
        if info.is_main:
            cohort.remove_stale_records()
        _write_json(cohort.record_path(info.rank), cohort.record)
        todo = []
        for entry in mine:  # first the slides already done: quick, and the manifest is right early
            previous = cohort.previous(entry)
            if cohort.is_complete(entry, previous):
                kept = {k: previous[k] for k in ("seconds", "megapixels", "size", "output_bytes", "identity", "stained_by",
                                                 "finished") if k in previous}
                cohort.write_status(entry, "skipped", **kept)
                run.skipped.append(entry.name)
            else:
                todo.append(entry)
        if run.skipped:
            log(f"{len(run.skipped)} slide(s) already done with these settings: skipped")
        if info.is_main:
            cohort.write_manifest()
        try:
            with _slide_bar(len(mine), info, progress) as bar:
                bar.update(len(run.skipped))
                for entry in todo:
                    _stain_one(cohort, run, entry, stain, log)
                    bar.update(1)
                    if info.is_main:
                        cohort.write_manifest()
        except KeyboardInterrupt:
            if info.is_main:
                cohort.write_manifest("interrupted")
            raise
        cohort.record["finished"] = _now()
        _write_json(cohort.record_path(info.rank), cohort.record)
        run.incomplete = peers.wait_for_all()
        if info.is_main:
            run.manifest = cohort.write_manifest(run.incomplete)
    finally:
        peers.leave()
    return run


def _stain_one(cohort: _Cohort, run: CohortRun, entry: CohortEntry, stain: Callable[[CohortEntry, Path], SlideResult],
               log: Callable[[str], None]) -> None:
    """Stain one slide, recording running, then done or failed (or interrupted, raised again)."""
    identity = _identity(entry.slide)
    if entry.problem is not None:
        cohort.write_status(entry, "failed", reason=_one_line(entry.problem), identity=identity)
        run.failed.append(entry.name)
        log(f"failed: {display_name(entry.name)}: {entry.problem}")
        return
    cohort.write_status(entry, "running", started=_now(), identity=identity)
    out = cohort.out_dir / entry.output
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        result = stain(entry, out)
    except KeyboardInterrupt:
        cohort.write_status(entry, "interrupted", identity=identity, reason="interrupted; rerun to continue")
        raise
    except Exception as err:  # noqa: BLE001 (one slide's failure, whatever it is, must not stop the others)
        if not isinstance(err, (TdkstainError, OSError)):
            traceback.print_exc(file=sys.stderr)  # a bug, not a bad slide: the whole story, then go on
        reason = _reason(err)
        cohort.write_status(entry, "failed", reason=reason, identity=identity)
        run.failed.append(entry.name)
        log(f"failed: {display_name(entry.name)} ({display_name(entry.slide)}): {reason}")
        return
    finished = _now()
    megapixels = result.width * result.height / 1e6
    cohort.write_status(
        entry, "done", identity=identity, seconds=round(result.seconds, 3), megapixels=round(megapixels, 4),
        size=[result.width, result.height], output_bytes=out.stat().st_size, finished=finished,
        stained_by={**cohort.who, "finished": finished},
    )
    run.done.append(entry.name)


def summary_lines(run: CohortRun, out_dir: Path) -> list[str]:
    """The end-of-run summary: counts, then each failed slide with its reason (rank 0: the whole cohort)."""
    if run.manifest is None:
        return [(f"this process's share, {len(run.share)} slide(s): {len(run.done)} done, {len(run.failed)} failed, "
                 f"{len(run.skipped)} skipped (rank 0 writes the manifest {out_dir / MANIFEST_JSON})")]
    counts = run.manifest["counts"]
    slides = run.manifest["slides"]
    processes = f" by {run.world} processes" if run.world > 1 else ""
    lines = [(f"{len(slides)} slide(s) -> {out_dir}{processes}: {counts['done']} done, {counts['failed']} failed, "
              f"{counts['skipped']} skipped; manifest {out_dir / MANIFEST_JSON}")]
    unfinished = counts["interrupted"] + counts["running"] + counts["pending"]
    if unfinished:
        lines.append(f"{unfinished} slide(s) not finished ({run.incomplete or 'interrupted'}); rerun the same command to "
                     "finish them")
    for row in slides:
        if row["status"] == "failed":
            lines.append(f"failed: {display_name(row['output'])} ({display_name(row['slide'])}): {row.get('reason')}")
    if counts["failed"]:
        lines.append("rerun the same command after fixing them: done slides are skipped, failed ones retried")
    return lines
