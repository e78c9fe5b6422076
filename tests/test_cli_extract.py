"""``tdkstain extract`` on the command line (through ``tdkstain.cli.main``)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from tdkstain.cli import main

synth = pytest.importorskip("tdkstain.synth")
knowledge = pytest.importorskip("tdkstain.knowledge.maps")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """8 clean synthetic pairs of 128 px, made once; tests copy it."""
    root = tmp_path_factory.mktemp("cli_synth") / "data"
    synth.write_dataset(root, 8, size=128, seed=3)
    return root


@pytest.fixture
def data(dataset, tmp_path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(dataset, root)
    return root


def test_help_states_the_defaults_of_extraction_params(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["extract", "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    defaults = knowledge.ExtractionParams()
    # The help quotes the defaults as text (no heavy import for --help); keep them true.
    assert f"(default: {defaults.membrane.mode})" in text
    assert f"saturation (default: {defaults.membrane.saturation_threshold:g})" in text
    assert f"(default: {defaults.membrane.threshold:.4f};" in text
    assert f"(default: as --mode, else {defaults.nuclei.mode})" in text
    assert f"(default: {defaults.nuclei.backend})" in text
    assert f"(default: {defaults.nuclei.mpp:g}," in text
    assert f"(default: {defaults.density_normalise})" in text
    assert defaults.membrane.blur and "(default: blurred)" in text


def test_extract_evaluate_and_overlays(data, capsys):
    code = main(["extract", str(data), "--overlays", "--evaluate-against-truth", "--quiet"])
    out = capsys.readouterr().out
    assert code == 0
    assert "8 IHC tiles: 8 extracted" in out
    assert str(data / "train_IHC_dab_mask") in out and str(data / "extraction_report" / "index.html") in out
    table = [line for line in out.splitlines() if line.startswith("| all |")]
    assert len(table) == 1
    f1 = float(table[0].split("|")[3])
    # The printed F1 is the evaluation's own number (to its printed precision), and a good one on clean tiles.
    from tdkstain.knowledge import extraction

    assert f1 == pytest.approx(extraction.evaluate_against_truth(data).row("all")["nuclei_f1"], abs=0.006)
    assert f1 >= 0.8
    assert len(list(data.glob("*_IHC_overlay/*.png"))) == 8
    assert len(list(data.glob("*_IHC_nuclei/*.csv"))) == 8


def test_rerun_with_other_options_is_refused_until_forced(data, capsys):
    assert main(["extract", str(data), "--quiet", "--no-report"]) == 0
    capsys.readouterr()
    assert main(["extract", str(data), "--quiet", "--no-blur"]) == 2
    err = capsys.readouterr().err
    assert "membrane.blur: True -> False" in err and "--force" in err
    assert main(["extract", str(data), "--quiet", "--no-blur", "--force", "--no-report"]) == 0
    record = json.loads((data / "extraction.json").read_text())
    assert record["params"]["membrane"]["blur"] is False
    mask = next(data.glob("train_IHC_dab_mask/*.png"))
    from tdkstain.data.images import read_gray

    assert set(read_gray(mask).ravel().tolist()) <= {0, 255}  # unblurred: binary


def test_bad_tile_is_named_and_skip_bad_goes_on(data, capsys):
    bad = sorted(data.glob("train_IHC/*.png"))[1]
    bad.write_bytes(b"not an image at all")
    assert main(["extract", str(data), "--quiet", "--no-report"]) == 2
    err = capsys.readouterr().err
    assert bad.name in err and "--skip-bad" in err
    assert main(["extract", str(data), "--quiet", "--skip-bad"]) == 0
    out = capsys.readouterr().out
    assert re.search(rf"bad tile:\s+\S*{re.escape(bad.name)}", out)
    assert "7 up to date" in out  # the good tiles of the first attempt were kept


def test_calibrate_stores_threshold_and_rerun_resumes(data, capsys):
    assert main(["extract", str(data), "--quiet", "--no-report", "--calibrate", "--calibrate-tiles", "4"]) == 0
    out = capsys.readouterr().out
    record = json.loads((data / "extraction.json").read_text())
    threshold = record["calibration"]["membrane_threshold"]
    assert f"calibrated membrane threshold: {threshold:.4f} (4 tiles)" in out
    assert record["params"]["membrane"]["mode"] == "adaptive" and record["params"]["membrane"]["threshold"] == threshold
    # Rerun without the flag: the stored calibration is reused, nothing redone.
    assert main(["extract", str(data), "--quiet", "--no-report"]) == 0
    assert "0 extracted, 8 up to date" in capsys.readouterr().out
    assert main(["extract", str(data), "--quiet", "--calibrate", "--mode", "release"]) == 2
    assert "--mode release" in capsys.readouterr().err


def test_mode_and_density_options_reach_the_parameters(data):
    assert main(["extract", str(data), "--quiet", "--no-report", "--split", "test", "--mode", "adaptive",
                 "--nuclei-mode", "release", "--density", "count", "--mpp", "0.25", "--membrane-threshold", "0.03"]) == 0
    params = json.loads((data / "extraction.json").read_text())["params"]
    assert params["membrane"]["mode"] == "adaptive" and params["nuclei"]["mode"] == "release"
    assert params["membrane"]["threshold"] == 0.03 and params["nuclei"]["mpp"] == 0.25
    assert params["density_normalise"] == "count"
    assert list(data.glob("test_IHC_nuclei_map/*.tif")) and not list(data.glob("train_IHC_nuclei_map/*"))


def test_missing_folder_is_a_clear_error(tmp_path, capsys):
    assert main(["extract", str(tmp_path / "nowhere"), "--quiet"]) == 2
    assert "nowhere" in capsys.readouterr().err
