"""Files that cannot be read, output permissions, single-tile evaluations, odd file names.

Every test here failed before its fix (the docstring says how). Tests run as
root in CI, and root reads a file of mode 0000: "permission denied" is
simulated by making ``open`` / ``os.open`` / ``os.scandir`` / ``os.listdir``
refuse one path (``_deny``), and a real ``chmod`` variant runs where the
user is not root.
"""

from __future__ import annotations

import builtins
import contextlib
import csv
import errno
import io
import json
import os
import re
import signal
import stat
from pathlib import Path
from urllib.parse import unquote_to_bytes

import numpy as np
import pytest
from conftest import make_dataset
from PIL import Image

from tdkstain.cli import build_parser, main
from tdkstain.data.images import image_size, read_rgb, write_png
from tdkstain.plumbing import atomic
from tdkstain.plumbing.atomic import write_text_atomic
from tdkstain.plumbing.errors import TdkstainError

RNG = np.random.default_rng(11)
POSIX = os.name == "posix"
ROOT = POSIX and os.geteuid() == 0
BAD_BYTES = b"tile_\xff_2+"  # not UTF-8: Python sees "tile_\udcff_2+"


def _tile(path: Path, size: int = 32) -> Path:
    return write_png(path, RNG.integers(0, 256, (size, size, 3), dtype=np.uint8))


def _deny(monkeypatch: pytest.MonkeyPatch, *paths: Path) -> None:
    """Reading (opening, listing) any of ``paths`` fails with EACCES, as for a file of mode 0000 and a non-root user."""
    denied = {os.path.abspath(p) for p in paths}

    def refused(target) -> bool:
        return isinstance(target, (str, bytes, os.PathLike)) and os.path.abspath(os.fsdecode(target)) in denied

    def error(target) -> PermissionError:
        return PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fsdecode(target))

    def wrap(real):
        def guarded(target, *args, **kwargs):
            if refused(target):
                raise error(target)
            return real(target, *args, **kwargs)

        return guarded

    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", wrap(real_open))
    monkeypatch.setattr(io, "open", wrap(real_open))
    monkeypatch.setattr(os, "open", wrap(os.open))
    monkeypatch.setattr(os, "scandir", wrap(os.scandir))
    monkeypatch.setattr(os, "listdir", wrap(os.listdir))


@pytest.fixture
def weights(tmp_path) -> Path:
    """A tiny generator (ngf 4, one block): translate runs in well under a second."""
    from tdkstain.models.tdkstain import ResnetGenerator
    from tdkstain.weights import save_network

    return save_network(tmp_path / "g.safetensors", ResnetGenerator(ngf=4, n_blocks=1), tile_size=32)


def _translate(weights: Path, *args) -> int:
    return main(["translate", "--checkpoint", str(weights), *map(str, args), "--device", "cpu", "--no-progress",
                 "--compile", "off"])


@pytest.fixture
def with_umask():
    """``with_umask(mask)`` sets the umask for the test; the old one is put back afterwards."""
    saved = os.umask(0o022)
    os.umask(saved)
    yield os.umask
    os.umask(saved)


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@contextlib.contextmanager
def _no_hang(seconds: int = 60):
    """On POSIX, fail a block that blocks (e.g. on opening a FIFO) instead of hanging the suite."""
    if not POSIX:
        yield
        return

    def alarm(signum, frame):  # pragma: no cover - only when something blocks
        raise TimeoutError("blocked for a minute: was a FIFO opened?")

    before = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, before)


def _non_utf8_names_allowed(folder: Path) -> bool:
    try:
        probe = os.path.join(os.fsencode(folder), b"probe_\xff")
        open(probe, "wb").close()
        os.remove(probe)
        return True
    except (OSError, ValueError):
        return False


# ============================================================================ 1. reading is not writing


def test_unreadable_image_is_a_read_error_naming_it(tmp_path, monkeypatch):
    """Before: the PermissionError of open() escaped read_rgb as an OSError."""
    secret = _tile(tmp_path / "secret.png")
    _deny(monkeypatch, secret)
    for reader in (read_rgb, image_size):
        with pytest.raises(TdkstainError, match=r"secret\.png: cannot read it \(permission denied\)") as info:
            reader(secret)
        assert "write" not in str(info.value)


@pytest.mark.skipif(not POSIX or ROOT, reason="root reads a file of mode 0000; the monkeypatched variant above runs always")
def test_unreadable_image_is_a_read_error_with_a_real_chmod(tmp_path):
    secret = _tile(tmp_path / "secret.png")
    secret.chmod(0)
    try:
        with pytest.raises(TdkstainError, match=r"secret\.png: cannot read it \(permission denied\)"):
            read_rgb(secret)
    finally:
        secret.chmod(0o644)


def test_translate_calls_an_unreadable_input_unreadable_not_an_unwritable_folder(tmp_path, monkeypatch, weights, capsys):
    """Before: "secret.png: cannot write to the folder ... (not writable: Permission denied)"."""
    inputs = tmp_path / "he"
    _tile(inputs / "ok.png")
    secret = _tile(inputs / "secret.png")
    _deny(monkeypatch, secret)
    assert _translate(weights, inputs, "--out", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "secret.png: cannot read it (permission denied)" in err and "--skip-bad" in err, err
    assert "cannot write" not in err and "not writable" not in err, err


def test_translate_skip_bad_skips_an_unreadable_input_and_lists_it(tmp_path, monkeypatch, weights, capsys):
    """Before: --skip-bad stopped at the file (an OSError is no TdkstainError) with the wrong message."""
    inputs = tmp_path / "he"
    _tile(inputs / "a.png")
    _tile(inputs / "c.png")
    secret = _tile(inputs / "b_secret.png")
    _deny(monkeypatch, secret)
    out = tmp_path / "out"
    assert _translate(weights, inputs, "--out", out, "--skip-bad") == 0
    printed = capsys.readouterr().out
    assert "skipped 1 unreadable" in printed and "b_secret.png: cannot read it (permission denied)" in printed, printed
    assert printed.count("b_secret.png") == 1  # named once, not "PATH: PATH: ..."
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "c.png"]


@pytest.fixture
def broken_dataset(tmp_path) -> Path:
    """Release layout: 2 good pairs, a partnerless H&E, a truncated IHC, and a pair whose IHC will be unreadable."""
    root = tmp_path / "data"
    for stem in ("ok1", "ok2", "locked", "cut"):
        _tile(root / "train_HE" / f"{stem}.png")
        _tile(root / "train_IHC" / f"{stem}.png")
    _tile(root / "train_HE" / "alone.png")
    data = (root / "train_IHC" / "cut.png").read_bytes()
    (root / "train_IHC" / "cut.png").write_bytes(data[: len(data) // 2])
    return root


def test_check_lists_an_unreadable_file_with_every_other_problem(broken_dataset, monkeypatch, capsys):
    """Before: check stopped at the unreadable file (exit 2, "cannot write to the folder")."""
    _deny(monkeypatch, broken_dataset / "train_IHC" / "locked.png")
    assert main(["check", str(broken_dataset), "--quiet"]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3, lines
    assert any(line.startswith("unreadable") and "train_IHC/locked.png: cannot read it (permission denied)" in line
               for line in lines), lines
    assert any(line.startswith("unreadable") and "train_IHC/cut.png" in line for line in lines), lines
    assert any(line.startswith("missing_ihc") and "train_HE/alone.png" in line for line in lines), lines


@pytest.mark.skipif(not POSIX or ROOT, reason="root reads a file of mode 0000; the monkeypatched variant above runs always")
def test_check_lists_a_chmod_000_file(broken_dataset, capsys):
    locked = broken_dataset / "train_IHC" / "locked.png"
    locked.chmod(0)
    try:
        assert main(["check", str(broken_dataset), "--quiet"]) == 1
    finally:
        locked.chmod(0o644)
    assert "locked.png: cannot read it (permission denied)" in capsys.readouterr().out


def test_extract_reports_an_unreadable_tile_as_unreadable(tmp_path, monkeypatch, capsys):
    """A bad tile's error says why it could not be read (before: "PermissionError: ..." from a catch-all)."""
    root = make_dataset(tmp_path / "data", n_train=2, n_test=0, size=48, knowledge=False)
    locked = min((root / "train_IHC").iterdir())
    _deny(monkeypatch, locked)
    assert main(["extract", str(root), "--quiet", "--skip-bad", "--no-report"]) == 0
    out = capsys.readouterr().out
    assert f"bad tile:   {locked}: cannot read it (permission denied)" in out, out
    assert out.count(str(locked)) == 1  # the path once, not "PATH: PATH: ..."


def test_a_read_inside_an_atomic_write_is_not_called_a_write_failure(tmp_path, monkeypatch):
    """Before: any EACCES inside ``atomic_path``'s block, reading an input included, became "cannot write to the folder"."""
    from tdkstain.plumbing.atomic import atomic_path

    source = _tile(tmp_path / "in.png")
    _deny(monkeypatch, source)
    with pytest.raises(PermissionError) as info, atomic_path(tmp_path / "out" / "copy.png") as tmp:
        tmp.write_bytes(source.read_bytes())
    assert info.value.filename == str(source)
    assert not (tmp_path / "out" / "copy.png").exists() and not list((tmp_path / "out").iterdir())


def test_os_error_says_read_write_or_neither_and_never_guesses_write_for_a_read(tmp_path, monkeypatch):
    """The CLI's last-resort handler (before: any EACCES was "cannot write to the folder")."""
    existing = _tile(tmp_path / "in.png")
    denied = PermissionError(errno.EACCES, "Permission denied", str(existing))
    real_access = os.access

    # A file the user cannot read: a read problem.
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if os.fspath(p) == str(existing) else real_access(p, mode))
    assert str(atomic.os_error(denied)).startswith(f"{existing}: cannot read it (permission denied)")
    # A file the user can read (root can read anything): not called a write problem.
    monkeypatch.setattr(os, "access", real_access)
    message = str(atomic.os_error(denied))
    assert "cannot write" not in message and "permission denied" in message, message
    # Creating a file in a folder that refuses writes: a write problem.
    new = tmp_path / "sub" / "new.txt"
    (tmp_path / "sub").mkdir()
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: not (os.fspath(p) == str(new.parent) and mode & os.W_OK))
    assert "cannot write to the folder" in str(atomic.os_error(PermissionError(errno.EACCES, "Permission denied", str(new))))
    # A full disk is a write problem; an error without a path (or with a file descriptor) is left alone.
    assert "disk full" in str(atomic.os_error(OSError(errno.ENOSPC, "No space left on device", str(new))))
    assert atomic.os_error(OSError(errno.EACCES, "Permission denied")) is None
    assert atomic.os_error(OSError(errno.EBADF, "Bad file descriptor", 3)) is None
    assert "cannot read it" in str(atomic.read_error(existing, denied)) and "folder" in str(atomic.read_error(tmp_path, denied, folder=True))


def test_every_command_named_in_the_pixel_limit_message_takes_max_pixels(tmp_path):
    """Before: the message told translate users to pass --max-pixels, which translate refused."""
    big = _tile(tmp_path / "big.png", size=40)
    with pytest.raises(TdkstainError) as info:
        read_rgb(big, max_pixels=1000)
    message = str(info.value)
    assert "--max-pixels 1600" in message  # the value that lets this image through
    named = re.findall(r"tdkstain ([a-z ,]+?) take it", message)[0].replace(" and ", ", ").split(", ")
    assert set(named) == {"check", "extract", "translate", "evaluate"}, named
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command").choices
    for command in named:
        assert "--max-pixels" in subparsers[command].format_help(), command


def test_max_pixels_reaches_the_reader_in_translate_extract_and_evaluate(tmp_path, weights, capsys):
    inputs = tmp_path / "he"
    _tile(inputs / "a.png", size=40)
    assert _translate(weights, inputs, "--out", tmp_path / "out", "--max-pixels", "1000") == 2
    assert "exceeds the limit of 1,000 pixels" in capsys.readouterr().err
    assert _translate(weights, inputs, "--out", tmp_path / "out", "--max-pixels", "1600") == 0

    root = make_dataset(tmp_path / "data", n_train=1, n_test=0, size=48, knowledge=False)
    assert main(["extract", str(root), "--quiet", "--no-report", "--max-pixels", "1000"]) == 2
    assert "exceeds the limit of 1,000 pixels" in capsys.readouterr().err

    _tile(tmp_path / "real" / "x.png", size=40)
    _tile(tmp_path / "fake" / "x.png", size=40)
    assert main(["evaluate", "--real", str(tmp_path / "real"), "--fake", str(tmp_path / "fake"), "--out",
                 str(tmp_path / "report"), "--no-fid", "--no-perceptual", "--max-pixels", "1000"]) == 2
    assert "exceeds the limit of 1,000 pixels" in capsys.readouterr().err

    with pytest.raises(SystemExit):
        main(["translate", "--checkpoint", str(weights), str(inputs), "--out", str(tmp_path / "o"), "--max-pixels", "0"])
    assert "at least 1 pixel" in capsys.readouterr().err


def test_an_extraction_json_that_is_not_utf8_is_named_not_a_traceback(tmp_path, capsys):
    """Before: UnicodeDecodeError escaped read_extraction_record (it caught OSError and JSON errors only)."""
    root = make_dataset(tmp_path / "data", n_train=1, n_test=0, size=48, knowledge=False)
    (root / "extraction.json").write_bytes(b"\xff\xfe{}")
    assert main(["extract", str(root), "--quiet"]) == 2
    assert "extraction.json: not readable JSON" in capsys.readouterr().err


# ============================================================================ 1. file names that are not UTF-8


@pytest.fixture
def non_utf8_dataset(tmp_path) -> Path:
    root = make_dataset(tmp_path / "data", n_train=3, n_test=0, size=48, knowledge=False)
    if not _non_utf8_names_allowed(root):
        pytest.skip("this file system refuses file names that are not UTF-8 (e.g. macOS)")
    for stain in ("HE", "IHC"):
        folder = os.fsencode(root / f"train_{stain}")
        os.rename(os.path.join(folder, b"tile_002_2+.png"), os.path.join(folder, BAD_BYTES + b".png"))
    return root


def _assert_clean_utf8(path: Path) -> str:
    text = path.read_bytes().decode("utf-8")  # strict: raises on anything that is not UTF-8
    assert "\\udcff" not in text and "\udcff" not in text
    return text


def test_extraction_report_survives_a_non_utf8_file_name_on_every_rerun(non_utf8_dataset, capsys):
    """Before: UnicodeEncodeError in the report (urllib quote, then the UTF-8 encoding), on every run."""
    for _ in range(2):  # the rerun skips every tile and writes the report again
        assert main(["extract", str(non_utf8_dataset), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "0 extracted, 3 up to date" in out
    report = non_utf8_dataset / "extraction_report"
    html = _assert_clean_utf8(report / "index.html")
    assert "tile_\ufffd_2+" in html
    for link in re.findall(r"(?:src|href)='([^']+)'", html):  # every link opens its file, by the name's bytes
        assert os.path.exists(os.path.join(os.fsencode(report), unquote_to_bytes(link))), link
    assert any(b"\xff" in unquote_to_bytes(link) for link in re.findall(r"src='([^']+)'", html))
    stems = [t["stem"] for t in json.loads(_assert_clean_utf8(report / "report.json"))["per_tile"]]
    assert "tile_\ufffd_2+" in stems
    _assert_clean_utf8(non_utf8_dataset / "extraction.json")


def test_check_prints_a_non_utf8_name_on_a_strict_utf8_stdout(non_utf8_dataset, capsys):
    """Before: printing "tile_\\udcff_2+.png" raised UnicodeEncodeError on a UTF-8 (strict) stdout, as capsys has."""
    os.remove(os.path.join(os.fsencode(non_utf8_dataset / "train_HE"), BAD_BYTES + b".png"))
    assert main(["check", str(non_utf8_dataset), "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "missing_he" in out and "tile_\ufffd_2+.png" in out, out


def test_evaluate_writes_a_non_utf8_tile_name_safely(tmp_path, capsys):
    if not _non_utf8_names_allowed(tmp_path):
        pytest.skip("this file system refuses file names that are not UTF-8 (e.g. macOS)")
    for folder in ("real", "fake"):
        (tmp_path / folder).mkdir()
        for name in (b"a_0", BAD_BYTES):
            image = RNG.integers(0, 256, (48, 48, 3), dtype=np.uint8)
            Image.fromarray(image).save(os.path.join(os.fsencode(tmp_path / folder), name + b".png"))
    out = tmp_path / "report"
    assert main(["evaluate", "--real", str(tmp_path / "real"), "--fake", str(tmp_path / "fake"), "--out", str(out),
                 "--no-fid", "--no-perceptual", "--grid-tiles", "1"]) == 0
    rows = list(csv.DictReader(io.StringIO(_assert_clean_utf8(out / "per_image.csv"))))
    assert {r["stem"] for r in rows} == {"a_0", "tile_\ufffd_2+"}
    _assert_clean_utf8(out / "metrics.json")
    html = _assert_clean_utf8(out / "index.html")
    links = [link for link in re.findall(r'(?:src|href)="([^"]+)"', html)]
    assert any(b"\xff" in unquote_to_bytes(link) for link in links)
    for link in links:
        assert os.path.exists(os.path.join(os.fsencode(out), unquote_to_bytes(link))), link


def test_safe_text_and_display_name():
    assert atomic.safe_text("tile_\udcff.png") == "tile_\ufffd.png" and atomic.safe_text("plain é") == "plain é"
    assert atomic.display_name("a\nb\tc\x1b\udcff") == "a\\nb\\tc\\x1b\ufffd"


# ============================================================================ 2. permissions


@pytest.mark.skipif(not POSIX, reason="POSIX permission bits")
@pytest.mark.parametrize("umask", [0o022, 0o002, 0o027])
def test_new_outputs_honour_the_umask(tmp_path, with_umask, umask):
    """Before: every output was 0600 (mkstemp's private mode), whatever the umask."""
    with_umask(umask)
    write_text_atomic(tmp_path / "a.json", "{}\n")
    write_png(tmp_path / "b.png", np.zeros((4, 4, 3), np.uint8))
    write_png(tmp_path / "sub" / "c.png", np.zeros((4, 4), np.uint8))
    for name in ("a.json", "b.png", "sub/c.png"):
        assert _mode(tmp_path / name) == 0o666 & ~umask, (name, oct(_mode(tmp_path / name)))
    assert _mode(tmp_path / "sub") == 0o777 & ~umask


@pytest.mark.skipif(not POSIX, reason="POSIX permission bits")
def test_replacing_an_output_keeps_a_users_chmod(tmp_path, with_umask):
    """Before: a rerun put 0600 back over the user's chmod."""
    with_umask(0o022)
    target = tmp_path / "metrics.json"
    write_text_atomic(target, "first\n")
    for mode in (0o640, 0o664, 0o444):
        target.chmod(mode)
        write_text_atomic(target, "again\n")
        assert _mode(target) == mode and target.read_text() == "again\n"


@pytest.mark.skipif(not POSIX, reason="POSIX permission bits")
def test_command_outputs_are_readable_by_the_group_with_umask_002(tmp_path, with_umask, weights):
    with_umask(0o002)
    inputs = tmp_path / "he"
    _tile(inputs / "a.png")
    assert _translate(weights, inputs, "--out", tmp_path / "out") == 0
    assert _mode(tmp_path / "out" / "a.png") == 0o664
    root = make_dataset(tmp_path / "data", n_train=1, n_test=0, size=48, knowledge=False)
    assert main(["extract", str(root), "--quiet"]) == 0
    written = [root / "extraction.json", root / "extraction_report" / "index.html",
               *(root / "train_IHC_dab_mask").iterdir(), *(root / "train_IHC_nuclei").iterdir()]
    assert {oct(_mode(p)) for p in written} == {oct(0o664)}


# ============================================================================ 3. a single tile


class _FakeInception:
    """Stands in for the Inception network: deterministic 2048-d features, no weights needed."""

    description = "fake Inception for tests"

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images, np.float64)
        means = images.mean(axis=(1, 2, 3))[:, None]
        return np.sin(np.arange(2048)[None, :] * 0.01 + means) + means / 255.0


@pytest.fixture
def fake_inception(monkeypatch):
    from tdkstain.metrics import inception

    monkeypatch.setattr(inception, "InceptionFeatures", _FakeInception)


def _eval_folders(tmp_path: Path, n: int) -> tuple[Path, Path]:
    real, fake = tmp_path / "real", tmp_path / "fake"
    for i in range(n):
        image = RNG.integers(0, 256, (48, 48, 3), dtype=np.uint8)
        write_png(real / f"t{i}_1+.png", image)
        write_png(fake / f"t{i}_1+.png", np.clip(image.astype(int) + 9, 0, 255).astype(np.uint8))
    return real, fake


def test_evaluate_on_a_single_pair_reports_ssim_psnr_and_says_why_fid_is_unavailable(tmp_path, fake_inception, capsys):
    """Before: the whole evaluation failed with "a covariance needs at least 2 images, got 1"."""
    real, fake = _eval_folders(tmp_path, 1)
    out = tmp_path / "report"
    assert main(["evaluate", "--real", str(real), "--fake", str(fake), "--out", str(out), "--no-perceptual"]) == 0
    captured = capsys.readouterr()
    assert "SSIM" in captured.out and "PSNR" in captured.out and "nuclei MAE" in captured.out
    assert "FID unavailable: FID and KID need at least 2 tiles" in captured.err
    metrics = json.loads((out / "metrics.json").read_text())
    method = metrics["methods"]["fake"]
    assert method["ssim"]["n"] == 1 and method["psnr"]["mean"] is not None
    for key in ("fid", "kid"):
        assert method[key]["available"] is False and "at least 2 tiles" in method[key]["reason"]
        assert "this evaluation has 1" in method[key]["reason"]
        assert metrics["definitions"][key]["available"] is False
    assert "at least 2 tiles" in (out / "index.html").read_text()


def test_evaluate_on_two_pairs_computes_fid_and_kid(tmp_path, fake_inception):
    """The single-tile rule stops nowhere else: with 2 tiles FID and KID are numbers."""
    real, fake = _eval_folders(tmp_path, 2)
    out = tmp_path / "report"
    assert main(["evaluate", "--real", str(real), "--fake", str(fake), "--out", str(out), "--no-perceptual",
                 "--grid-tiles", "0"]) == 0
    method = json.loads((out / "metrics.json").read_text())["methods"]["fake"]
    assert np.isfinite(method["fid"]["value"]) and np.isfinite(method["kid"]["mean"])


def test_fid_minimum_is_one_number():
    from tdkstain.evaluation.runner import FID_MIN_TILES
    from tdkstain.metrics.fid import MIN_IMAGES, FeatureStats

    assert FID_MIN_TILES == MIN_IMAGES == 2
    stats = FeatureStats()
    stats.update(np.zeros((1, 4)))
    with pytest.raises(TdkstainError, match="FID needs at least 2 images per set"):
        _ = stats.cov


def test_evaluate_into_a_file_fails_before_measuring(tmp_path, monkeypatch, capsys):
    """An --out that is a file is found before the tiles are measured (before: after all the work)."""
    from tdkstain.evaluation import runner

    real, fake = _eval_folders(tmp_path, 2)
    (tmp_path / "report").write_text("a file where the report folder goes")

    def measured(*args, **kwargs):
        raise AssertionError("the tiles were measured before the output folder was checked")

    monkeypatch.setattr(runner, "_measure_tiles", measured)
    assert main(["evaluate", "--real", str(real), "--fake", str(fake), "--out", str(tmp_path / "report"),
                 "--no-fid", "--no-perceptual"]) == 2
    assert "is a file, in the way" in capsys.readouterr().err


# ============================================================================ 4. links, pipes, folders, names


@pytest.mark.skipif(not POSIX, reason="symbolic links and FIFOs")
def test_symlink_loop_dangling_link_and_fifo_are_named_for_what_they_are(tmp_path):
    """Before: the loop and the dangling link were "no such file", the FIFO "is not a file (a folder?)"."""
    loop = tmp_path / "loop.png"
    loop.symlink_to(loop)
    dangling = tmp_path / "dangling.png"
    dangling.symlink_to(tmp_path / "gone.png")
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with _no_hang():
        with pytest.raises(TdkstainError, match=r"loop\.png: cannot read it \(a symbolic link loop"):
            read_rgb(loop)
        with pytest.raises(TdkstainError, match=r"dangling\.png: a symbolic link to .*gone\.png, which does not exist"):
            read_rgb(dangling)
        with pytest.raises(TdkstainError, match=r"pipe\.png: is a named pipe \(FIFO\), not a regular file"):
            read_rgb(fifo)  # refused before opening: opening a FIFO without a writer blocks
        with pytest.raises(TdkstainError, match=r"pipe\.png: is a named pipe"):
            image_size(fifo)
        with pytest.raises(TdkstainError, match=r"is a folder, not a file"):
            read_rgb(tmp_path)


@pytest.mark.skipif(not POSIX, reason="symbolic links and FIFOs")
def test_check_lists_links_and_pipes_instead_of_dropping_them(tmp_path, capsys):
    """Before: a broken link or pipe named x.png vanished, and its partner was "missing_ihc"."""
    root = tmp_path / "data"
    for stem in ("ok", "loop", "pipe", "dangling"):
        _tile(root / "train_HE" / f"{stem}.png")
    _tile(root / "train_IHC" / "ok.png")
    (root / "train_IHC" / "loop.png").symlink_to(root / "train_IHC" / "loop.png")
    (root / "train_IHC" / "dangling.png").symlink_to(root / "nowhere.png")
    os.mkfifo(root / "train_IHC" / "pipe.png")
    with _no_hang():
        assert main(["check", str(root), "--quiet"]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("unreadable") for line in lines), lines
    text = "\n".join(lines)
    assert "loop.png: cannot read it (a symbolic link loop" in text
    assert "pipe.png: is a named pipe (FIFO)" in text and "dangling.png: a symbolic link to" in text


@pytest.mark.skipif(not POSIX, reason="FIFOs")
def test_translate_names_a_fifo_input_and_skip_bad_skips_it(tmp_path, weights, capsys):
    """Before: a FIFO named on the command line was "no such file or folder"; in a folder it vanished."""
    inputs = tmp_path / "he"
    _tile(inputs / "a.png")
    os.mkfifo(inputs / "pipe.png")
    with _no_hang():
        assert _translate(weights, inputs / "pipe.png", "--out", tmp_path / "out") == 2
        assert "pipe.png: is a named pipe (FIFO), not a regular file" in capsys.readouterr().err
        assert _translate(weights, inputs, "--out", tmp_path / "out", "--skip-bad") == 0
    assert "skipped 1 unreadable" in capsys.readouterr().out
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["a.png"]


def test_folder_that_cannot_be_listed(tmp_path, monkeypatch, weights, capsys):
    """Before: translate said "no image files in this folder", check "no paired layout found" (or called the
    partners of an unlisted folder's files partnerless), evaluate "cannot write to the folder"."""
    inputs = tmp_path / "he"
    _tile(inputs / "a.png")
    root = tmp_path / "data"
    for stem in ("a", "b"):
        _tile(root / "train_HE" / f"{stem}.png")
        _tile(root / "train_IHC" / f"{stem}.png")
    _deny(monkeypatch, inputs, root / "train_IHC")

    assert _translate(weights, inputs, "--out", tmp_path / "out") == 2
    assert f"{inputs}: cannot list the folder (permission denied)" in capsys.readouterr().err

    assert main(["check", str(root), "--quiet"]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("unreadable") and "train_IHC: cannot list the folder (permission denied)" in lines[0], lines

    from tdkstain.data.pairs import discover_pairs

    with pytest.raises(TdkstainError, match=r"train_IHC: cannot list the folder \(permission denied\)"):
        discover_pairs(root)

    _deny(monkeypatch, root)
    assert main(["check", str(root)]) == 2
    assert f"{root}: cannot list the folder (permission denied)" in capsys.readouterr().err

    real, fake = _eval_folders(tmp_path / "eval", 2)
    _deny(monkeypatch, real)
    assert main(["evaluate", "--real", str(real), "--fake", str(fake), "--out", str(tmp_path / "report"),
                 "--no-fid", "--no-perceptual"]) == 2
    err = capsys.readouterr().err
    assert f"{real}: cannot list the folder (permission denied)" in err and "cannot write" not in err, err


def test_a_newline_in_a_file_name_keeps_one_problem_per_line(tmp_path, capsys):
    """Before: the name's newline split the problem's line in two (check --quiet promises one line each)."""
    root = tmp_path / "data"
    _tile(root / "train_HE" / "ok.png")
    _tile(root / "train_IHC" / "ok.png")
    _tile(root / "train_HE" / "two\nlines.png")
    _tile(root / "train_HE" / "tab\there.png")
    assert main(["check", str(root), "--quiet"]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2, lines
    assert any("two\\nlines.png" in line for line in lines) and any("tab\\there.png" in line for line in lines)


def test_an_output_name_near_the_file_name_limit_is_written(tmp_path):
    """Before: the temporary ('.tmp-' + stem + 8 characters) exceeded 255 bytes: a raw ENAMETOOLONG."""
    name = "x" * 245 + ".png"
    write_png(tmp_path / name, np.zeros((4, 4, 3), np.uint8))
    assert read_rgb(tmp_path / name).shape == (4, 4, 3)
    assert [p.name for p in tmp_path.iterdir()] == [name]
