"""Cohorts of slides: inputs (paths, folders, CSV manifests), the manifest, reruns, bad slides, shares under torchrun."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

openslide = pytest.importorskip("openslide")

from conftest import EXAMPLES, he_like, write_test_slide  # noqa: E402
from tdkstain.cli import main as cli_main  # noqa: E402
from tdkstain.models.tdkstain import ResnetGenerator  # noqa: E402
from tdkstain.plumbing.distributed import DistInfo  # noqa: E402
from tdkstain.plumbing.errors import TdkstainError  # noqa: E402
from tdkstain.slides.cohort import (  # noqa: E402
    MANIFEST_CSV,
    MANIFEST_JSON,
    STATUS_DIR,
    assign_shares,
    check_cohort_outputs,
    collect_cohort,
    run_cohort,
    single_slide_output,
)

REPO = Path(__file__).resolve().parents[1]
#: Small and fast: the tiny generator at 0.5 um/px (the slides' own level 0), tiles of 128.
FAST = ("--tile", "128", "--overlap", "16", "--compile", "off", "--device", "cpu", "--no-progress")


@pytest.fixture(scope="module")
def checkpoint(tiny_slide_checkpoint) -> Path:
    return tiny_slide_checkpoint


@pytest.fixture(scope="module")
def slide_folder(tmp_path_factory) -> Path:
    """Four small 2-level slides at 0.5 um/px (different sizes and textures), tissue in each."""
    folder = tmp_path_factory.mktemp("cohort") / "scans"
    folder.mkdir()
    for i, (height, width) in enumerate([(384, 512), (512, 384), (384, 384), (448, 512)]):
        image, _ = he_like(height, width, seed=i)
        write_test_slide(folder / f"case{i}.tif", image, mpp=0.5, levels=2)
    return folder


def truncated_svs(path: Path) -> Path:
    """The shipped Aperio example cut at 60 % of its bytes (as tests/test_reliability_slides.py makes it)."""
    data = (EXAMPLES / "he_cmu_small_region.svs").read_bytes()
    path.write_bytes(data[: int(len(data) * 0.6)])
    return path


def slide_cli(capsys, *args: str) -> tuple[int, str, str]:
    """``tdkstain slide ARGS`` in this process: exit code, stdout (the summary), stderr (the log)."""
    code = cli_main(["slide", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def manifest(out: Path) -> dict:
    return json.loads((out / MANIFEST_JSON).read_text())


def statuses(out: Path) -> dict[str, str]:
    return {row["output"]: row["status"] for row in manifest(out)["slides"]}


# --------------------------------------------------------------------------- inputs


def test_inputs_as_paths_folders_and_csv_manifests(slide_folder, tmp_path):
    sub = tmp_path / "site" / "deeper"
    sub.mkdir(parents=True)
    shutil.copy(slide_folder / "case0.tif", tmp_path / "site" / "top.tif")
    shutil.copy(slide_folder / "case1.tif", sub / "inner.svs")  # a vendor suffix: taken by name
    (tmp_path / "site" / "notes.txt").write_text("not a slide")
    (tmp_path / "site" / ".hidden.tif").write_bytes(b"")
    (tmp_path / "site" / "top.tif.partial").mkdir()  # a work folder: never entered

    flat = collect_cohort([tmp_path / "site"])
    assert [(e.slide.name, e.name) for e in flat] == [("top.tif", "top.tif")]
    deep = collect_cohort([tmp_path / "site"], recursive=True)
    assert [(e.slide.name, e.name) for e in deep] == [("inner.svs", "deeper/inner.tif"), ("top.tif", "top.tif")]

    # A CSV: a header (with a column that is ignored), comments, relative paths from the CSV's folder, a path
    # outside that folder (allowed: slides live elsewhere), output names with and without a suffix.
    lists = tmp_path / "lists"
    lists.mkdir()
    csv_file = lists / "cohort.csv"
    csv_file.write_text(
        "slide,output,diagnosis\n"
        "# a comment row\n"
        "../site/top.tif,renamed,HER2 2+\n"
        f"{sub / 'inner.svs'},siteB/inner.tiff,\n"
        "\n"
        f"{slide_folder / 'case2.tif'},,\n"
    )
    entries = collect_cohort([csv_file, slide_folder / "case3.tif"])
    assert [(e.name, e.problem) for e in entries] == [
        ("case2.tif", None), ("case3.tif", None), ("renamed.tif", None), ("siteB/inner.tiff", None)]
    renamed = next(e for e in entries if e.name == "renamed.tif")
    assert renamed.slide.resolve() == (tmp_path / "site" / "top.tif").resolve() and "cohort.csv line 3" in renamed.origin

    # Without a header: one or two cells a row; a slide suffix in the output name becomes .tif.
    bare = lists / "bare.csv"
    bare.write_text("../site/top.tif,a.svs\n../site/top.tif\n")
    assert [e.name for e in collect_cohort([bare])] == ["a.tif", "top.tif"]
    bare.write_text("../site/top.tif,a.tif,extra\n")
    with pytest.raises(TdkstainError, match=r"bare.csv line 1: 3 cells.*header row"):
        collect_cohort([bare])


def test_missing_inputs_and_outputs_outside_the_folder_are_refused_before_any_work(slide_folder, tmp_path):
    with pytest.raises(TdkstainError, match=r"absent.svs: no such slide, folder or CSV manifest"):
        collect_cohort([slide_folder / "case0.tif", tmp_path / "absent.svs"])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TdkstainError, match=r"empty: no slide files .* \(pass --recursive"):
        collect_cohort([empty])
    manifest_file = tmp_path / "m.csv"
    for bad in ("../escape.tif", "/abs/out.tif", "a/../../b.tif", f"{STATUS_DIR}/x.tif"):
        manifest_file.write_text(f"slide,output\n{slide_folder / 'case0.tif'},{bad}\n")
        with pytest.raises(TdkstainError, match=r"m.csv line 2: output name"):
            collect_cohort([manifest_file])
    manifest_file.write_text("slide,output\n,x.tif\n")
    with pytest.raises(TdkstainError, match=r"m.csv line 2: no slide path"):
        collect_cohort([manifest_file])
    manifest_file.write_text("slide\n")
    with pytest.raises(TdkstainError, match=r"m.csv: lists no slides"):
        collect_cohort([manifest_file])
    # A row naming a missing file is not an error now: it becomes a failed slide and the others run.
    manifest_file.write_text("slide\nnot_there.svs\n")
    (entry,) = collect_cohort([manifest_file])
    assert "not_there.svs: no such slide file (" in entry.problem and "relative to the CSV's folder" in entry.problem


def test_output_name_collisions_are_refused_before_any_work(slide_folder, checkpoint, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(slide_folder / "case0.tif", other / "CASE0.tif")  # the same name but for case: one file on macOS
    out = tmp_path / "out"
    code, _, err = slide_cli(capsys, "--checkpoint", str(checkpoint), str(slide_folder), str(other), "--out", str(out), *FAST)
    assert code == 2 and "would both be written to" in err and "case0.tif" in err and "CASE0.tif" in err
    assert "distinct output names in a CSV manifest" in err and not out.exists()
    # The same slide named twice for the same output is one slide.
    twice = collect_cohort([slide_folder / "case0.tif", slide_folder])
    assert [e.name for e in twice] == ["case0.tif", "case1.tif", "case2.tif", "case3.tif"]
    # An output folder that is the slides' own folder would replace TIFF slides by their outputs.
    with pytest.raises(TdkstainError, match=r"case0.tif: its output .* would replace this input slide"):
        check_cohort_outputs(twice, slide_folder)


def test_one_file_out_with_several_inputs_says_to_pass_a_folder(slide_folder, tmp_path):
    assert single_slide_output([slide_folder / "case0.tif"], tmp_path / "x.tif")
    assert not single_slide_output([slide_folder / "case0.tif"], tmp_path / "stained")
    with pytest.raises(TdkstainError, match=r"--out .*x.tif names one file, but 2 inputs were given; pass an output folder"):
        single_slide_output([slide_folder / "case0.tif", slide_folder / "case1.tif"], tmp_path / "x.tif")
    with pytest.raises(TdkstainError, match=r"is a folder or CSV of slides"):
        single_slide_output([slide_folder], tmp_path / "x.tif")


# --------------------------------------------------------------------------- shares


@pytest.mark.parametrize("world", [1, 2, 3, 4, 5])
def test_shares_are_deterministic_disjoint_covering_and_balanced(world):
    rng = random.Random(world)
    for n in (0, 1, 3, 7, 40):
        weights = [rng.choice([0, 1, 10, 10, 500, 2**30 + rng.randrange(1000)]) for _ in range(n)]
        ranks = assign_shares(weights, world)
        assert ranks == assign_shares(list(weights), world)  # deterministic
        assert len(ranks) == n and all(0 <= r < world for r in ranks)  # every item exactly one rank
        shares = [[i for i in range(n) if ranks[i] == r] for r in range(world)]
        assert sorted(i for share in shares for i in share) == list(range(n))  # disjoint and covering
        loads = [sum(max(1, weights[i]) for i in share) for share in shares]
        if n:  # each item went to the least-loaded rank: no rank ends more than one item above another
            assert max(loads) - min(loads) <= max(max(1, w) for w in weights)
        if n >= world:
            assert all(shares)  # nobody idles while there are as many items as ranks
    assert assign_shares([5, 5, 5, 5], 2) == [0, 1, 0, 1] and assign_shares([1, 9, 1, 1], 2) == [1, 0, 1, 1]
    with pytest.raises(ValueError):
        assign_shares([1], 0)


# --------------------------------------------------------------------------- the manifest and reruns


def test_a_bad_slide_does_not_stop_the_others_and_reruns_skip_done_slides(slide_folder, checkpoint, tmp_path, capsys):
    scans = tmp_path / "scans"
    shutil.copytree(slide_folder, scans)
    truncated_svs(scans / "broken.svs")
    out = tmp_path / "stained"
    args = ("--checkpoint", str(checkpoint), str(scans), "--out", str(out), *FAST)

    code, summary, err = slide_cli(capsys, *args)
    assert code == 1, err
    assert "5 slide(s) -> " in summary and "4 done, 1 failed, 0 skipped" in summary
    failed = [line for line in summary.splitlines() if "failed: broken.tif" in line]
    assert len(failed) == 1 and str(scans / "broken.svs") in failed[0] and "Traceback" not in err
    assert "truncated or damaged" in failed[0] or "cannot read" in failed[0]
    data = manifest(out)
    assert data["counts"] == {"done": 4, "skipped": 0, "failed": 1, "interrupted": 0, "running": 0, "pending": 0}
    rows = {row["output"]: row for row in data["slides"]}
    assert rows["broken.tif"]["status"] == "failed" and "broken.svs" in rows["broken.tif"]["reason"]
    for i in range(4):
        row = rows[f"case{i}.tif"]
        assert row["status"] == "done" and row["seconds"] > 0 and row["megapixels"] > 0.1
        assert row["stained_by"]["rank"] == 0 and (out / f"case{i}.tif").is_file()
        assert (out / f"case{i}.thumbnail.png").is_file()
    assert (out / MANIFEST_CSV).read_text().splitlines()[0] == "output,slide,status,seconds,megapixels,rank,host,reason"
    before = {i: (out / f"case{i}.tif").stat().st_mtime_ns for i in range(4)}

    # Rerun: done slides are skipped (outputs untouched), the failed one is retried (and fails again).
    code, summary, err = slide_cli(capsys, *args)
    assert code == 1 and "0 done, 1 failed, 4 skipped" in summary
    assert {i: (out / f"case{i}.tif").stat().st_mtime_ns for i in range(4)} == before
    assert statuses(out) == {"broken.tif": "failed", **{f"case{i}.tif": "skipped" for i in range(4)}}
    assert manifest(out)["slides"][1]["seconds"] > 0  # a skipped slide keeps what its staining measured

    # Fixed: the retried slide is done, the others still skipped; exit 0. A deleted output is stained again.
    shutil.copy(scans / "case2.tif", scans / "broken.svs")
    (out / "case1.tif").unlink()
    code, summary, err = slide_cli(capsys, *args)
    assert code == 0, err
    assert "2 done, 0 failed, 3 skipped" in summary
    assert statuses(out)["broken.tif"] == "done" and statuses(out)["case1.tif"] == "done"

    # Other settings (here the JPEG quality, which changes the file): every slide is stained again.
    code, summary, _ = slide_cli(capsys, *args, "--jpeg-quality", "70")
    assert code == 0 and "5 done, 0 failed, 0 skipped" in summary


def test_csv_rows_of_missing_slides_fail_alone(slide_folder, checkpoint, tmp_path, capsys):
    listing = tmp_path / "cohort.csv"
    listing.write_text(f"slide,output\n{slide_folder / 'case0.tif'},first\nmissing/case9.svs,\n")
    out = tmp_path / "out"
    code, summary, err = slide_cli(capsys, "--checkpoint", str(checkpoint), str(listing), "--out", str(out), *FAST)
    assert code == 1, err
    assert "1 done, 1 failed, 0 skipped" in summary
    assert "case9.svs: no such slide file (" in summary and "cohort.csv line 3" in summary
    assert (out / "first.tif").is_file() and not (out / "case9.tif").exists()


def test_single_slide_with_out_file_is_unchanged_and_one_slide_into_a_folder_is_a_cohort(slide_folder, checkpoint, tmp_path,
                                                                                           capsys):
    out = tmp_path / "one" / "stained.tif"
    code, summary, err = slide_cli(capsys, "--checkpoint", str(checkpoint), str(slide_folder / "case0.tif"), "--out", str(out),
                                   *FAST)
    assert code == 0, err
    assert out.is_file() and (out.parent / "stained.thumbnail.png").is_file() and summary == ""
    assert sorted(p.name for p in out.parent.iterdir()) == ["stained.thumbnail.png", "stained.tif"]  # no manifest
    folder = tmp_path / "folder"
    code, summary, err = slide_cli(capsys, "--checkpoint", str(checkpoint), str(slide_folder / "case0.tif"), "--out",
                                   str(folder), *FAST)
    assert code == 0, err
    assert (folder / "case0.tif").read_bytes() == out.read_bytes()  # same slide, same settings: the same file
    assert statuses(folder) == {"case0.tif": "done"} and "1 done, 0 failed, 0 skipped" in summary


def test_interruption_is_recorded_and_the_rerun_finishes(slide_folder, tmp_path):
    """run_cohort itself: a KeyboardInterrupt marks the slide interrupted, the manifest says so, a rerun finishes."""
    from tdkstain.inference import Stainer
    from tdkstain.slides import SlideOptions, stain_slide
    from tdkstain.slides.cohort import cohort_settings

    torch.manual_seed(0)
    stainer = Stainer(ResnetGenerator(ngf=4, n_blocks=1).eval(), device="cpu", tile=128, overlap=16)
    options = SlideOptions()
    settings = cohort_settings(stainer, options, checkpoint_id="test", model_mpp=0.5)
    entries = collect_cohort([slide_folder / "case0.tif", slide_folder / "case1.tif"])
    out = tmp_path / "out"

    def stain(entry, path):
        return stain_slide(stainer, entry.slide, path, model_mpp=0.5, options=options, log=lambda m: None, progress=False)

    def interrupted(entry, path):
        if entry.name == "case1.tif":
            raise KeyboardInterrupt
        return stain(entry, path)

    with pytest.raises(KeyboardInterrupt):
        run_cohort(entries, out, interrupted, settings=settings, progress=False, log=lambda m: None)
    data = manifest(out)
    assert statuses(out) == {"case0.tif": "done", "case1.tif": "interrupted"} and data["incomplete"] == "interrupted"
    run = run_cohort(entries, out, stain, settings=settings, progress=False, log=lambda m: None)
    assert run.ok and run.done == ["case1.tif"] and run.skipped == ["case0.tif"]
    assert statuses(out) == {"case0.tif": "skipped", "case1.tif": "done"}


def test_processes_that_cannot_join_still_stain_their_share(slide_folder, tmp_path, monkeypatch):
    """WORLD_SIZE 2 without a rendezvous address: the gloo group cannot form; each process works alone, and rank 0
    writes a manifest that shows the other share as not finished (never silently complete)."""
    from tdkstain.slides.cohort import work_bytes

    for key in ("MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    entries = collect_cohort([slide_folder])
    ranks = assign_shares([work_bytes(e.slide) for e in entries], 2)
    stained: list[tuple[int, str]] = []

    def fake(rank):
        def stain(entry, path):
            stained.append((rank, entry.name))
            raise TdkstainError(f"{entry.slide}: not stained in this test")
        return stain

    messages: list[str] = []
    out = tmp_path / "out"
    second = run_cohort(entries, out, fake(1), settings={"k": 1}, info=DistInfo(rank=1, world=2), progress=False,
                        log=messages.append)
    assert any("could not join the other 1 process(es)" in m for m in messages)
    assert second.manifest is None and second.share == [e.name for e, r in zip(entries, ranks) if r == 1]
    first = run_cohort(entries, out, fake(0), settings={"k": 1}, info=DistInfo(rank=0, world=2), progress=False,
                       log=messages.append)
    assert sorted(stained) == sorted((r, e.name) for e, r in zip(entries, ranks))  # each slide once, by its own rank
    assert first.incomplete and not first.ok
    assert all(row["status"] == "failed" for row in first.manifest["slides"])  # both shares' failures merged


# --------------------------------------------------------------------------- torchrun


def test_torchrun_two_processes_stain_each_slide_once_and_match_one_process(slide_folder, checkpoint, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    args = ["slide", "--checkpoint", str(checkpoint), str(slide_folder), *FAST]
    single, multi = tmp_path / "single", tmp_path / "multi"
    proc = subprocess.run([sys.executable, "-m", "tdkstain", *args, "--out", str(single)], capture_output=True, text=True,
                          env=env, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone", "-m", "tdkstain"]
    proc = subprocess.run([*launcher, *args, "--out", str(multi)], capture_output=True, text=True, env=env, timeout=300,
                          check=False)
    print(proc.stdout)
    print(proc.stderr[-4000:])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "4 slide(s) -> " in proc.stdout and "by 2 processes: 4 done, 0 failed, 0 skipped" in proc.stdout

    data = manifest(multi)
    assert data["world_size"] == 2 and data["counts"]["done"] == 4
    by_manifest = {row["output"]: row["stained_by"]["rank"] for row in data["slides"]}
    records = [json.loads((multi / STATUS_DIR / f"rank-{r}.json").read_text()) for r in (0, 1)]
    stained = [name for record in records for name, status in record["slides"].items() if status == "done"]
    assert sorted(stained) == sorted(by_manifest) and len(stained) == len(set(stained)) == 4  # each slide once
    for rank, record in enumerate(records):
        assert record["rank"] == rank and record["finished"] and record["share"]  # both worked
        assert all(by_manifest[name] == rank for name in record["slides"])
    for name in by_manifest:
        assert (multi / name).read_bytes() == (single / name).read_bytes(), name
        thumbnail = Path(name).stem + ".thumbnail.png"
        assert (multi / thumbnail).read_bytes() == (single / thumbnail).read_bytes()
