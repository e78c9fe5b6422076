"""``tdkstain check``: every problem printed with its file, exit 1; clean data exit 0; unreadable layout exit 2."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tdkstain.cli import check as check_command

RNG = np.random.default_rng(3)


def tile(path: Path, size: tuple[int, int] = (16, 16)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(RNG.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)


@pytest.fixture
def broken_dataset(tmp_path) -> Path:
    """A release-layout dataset with the four classic problems, one file each."""
    root = tmp_path / "data"
    for stem in ("ok1", "ok2"):
        tile(root / "train_HE" / f"{stem}.png")
        tile(root / "train_IHC" / f"{stem}.png")
    tile(root / "train_HE" / "partnerless.png")  # missing IHC partner
    tile(root / "train_HE" / "mismatch.png", size=(16, 16))  # size mismatch
    tile(root / "train_IHC" / "mismatch.png", size=(20, 16))
    tile(root / "train_HE" / "truncated.png", size=(64, 64))  # truncated PNG
    tile(root / "train_IHC" / "truncated.png", size=(64, 64))
    data = (root / "train_IHC" / "truncated.png").read_bytes()
    (root / "train_IHC" / "truncated.png").write_bytes(data[: len(data) // 2])
    tile(root / "train_HE" / "textfile.png")  # non-image with an image extension
    (root / "train_IHC" / "textfile.png").write_text("hello, I am not a PNG\n")
    tile(root / "train_IHC_dab" / "ok1.png")  # knowledge folders are not data
    tile(root / "train_IHC_nuclei_map" / "ok1.png")
    return root


EXPECTED = [
    ("missing_ihc", "train_HE/partnerless.png"),
    ("size_mismatch", "train_HE/mismatch.png"),
    ("unreadable", "train_IHC/truncated.png"),
    ("unreadable", "train_IHC/textfile.png"),
]


def cli_main(argv: list[str]) -> int:
    """``tdkstain.cli.main``; skipped while another command's module is still missing from the tree."""
    from tdkstain import cli

    for module in cli.COMMANDS.values():
        try:
            importlib.import_module(f"tdkstain.cli.{module}")
        except ModuleNotFoundError as err:
            if err.name == f"tdkstain.cli.{module}":
                pytest.skip(f"tdkstain.cli.{module} not written yet; the full CLI cannot be built")
            raise
    return cli.main(argv)


def run_check_only(argv: list[str]) -> int:
    """The check command alone, through its own parser (independent of the other commands)."""
    parser = argparse.ArgumentParser(prog="tdkstain check")
    check_command.add_arguments(parser)
    return check_command.run(parser.parse_args(argv))


def assert_all_reported(out: str) -> None:
    for kind, name in EXPECTED:
        assert any(kind in line and name in line for line in out.splitlines()), f"{kind} {name} not in:\n{out}"


def test_check_command_reports_all_four_problems(broken_dataset, capsys):
    assert run_check_only([str(broken_dataset)]) == 1
    out = capsys.readouterr().out
    assert_all_reported(out)
    assert "problems (4):" in out
    assert "release layout" in out and "split train: 5 pairs" in out
    assert "train_IHC_dab" not in out


def test_main_exit_codes(broken_dataset, tmp_path, capsys):
    assert cli_main(["check", str(broken_dataset), "--quiet"]) == 1
    out = capsys.readouterr().out
    assert_all_reported(out)
    assert len(out.strip().splitlines()) == 4  # --quiet: the problems, nothing else

    clean = tmp_path / "clean"
    tile(clean / "trainA" / "x.png")
    tile(clean / "trainB" / "x.png")
    assert cli_main(["check", str(clean)]) == 0
    assert "no problems found" in capsys.readouterr().out

    assert cli_main(["check", str(tmp_path / "nothing")]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_python_m_tdkstain_check(broken_dataset):
    from tdkstain import cli

    for module in cli.COMMANDS.values():
        if importlib.util.find_spec(f"tdkstain.cli.{module}") is None:
            pytest.skip(f"tdkstain.cli.{module} not written yet; the full CLI cannot be built")
    env = dict(os.environ, PYTHONIOENCODING="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "tdkstain", "check", str(broken_dataset)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 1, result.stderr
    assert_all_reported(result.stdout)


def test_help_describes_layouts_and_options():
    parser = argparse.ArgumentParser(prog="tdkstain check", description=check_command.DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    check_command.add_arguments(parser)
    text = parser.format_help()
    for word in ("{split}_HE", "HE/{split}", "{split}A", "--manifest", "--split", "--quiet", "Exit status"):
        assert word in text
    assert check_command.HELP and len(check_command.HELP.splitlines()) == 1


def test_module_imports_only_the_standard_library():
    source = Path(check_command.__file__).read_text()
    top_level = [line for line in source.splitlines() if line.startswith(("import ", "from "))]
    assert all(line.split()[1].split(".")[0] in {"__future__", "argparse"} for line in top_level), top_level
