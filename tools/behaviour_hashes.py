"""Hashes of what tdkstain computes, through the command line only: a fingerprint to compare before and after a refactor.

A refactor that claims "no behaviour change" runs this before and after and
compares the two JSON files (``--compare``): every entry must be equal.
Covered, on fixed inputs, CPU, one thread:

- ``synth``: the files of a small synthetic dataset;
- ``extract``: every knowledge map written for it (both engines);
- ``translate``: the authors' ngf-8 generator (``tests/fixtures/official``)
  on real H&E, eager, and the image of a trained tiny run;
- ``slide``: the example SVS stained with that generator (decoded pixels of
  every pyramid level, so TIFF metadata such as dates does not count);
- ``train``: every tensor of the final checkpoint (networks, optimiser
  states) after 3 steps of every preset shrunk to tiny widths.

Only the command line is used, because module names are what a refactor
changes. Run from the repository root:

    python tools/behaviour_hashes.py --out before.json
    python tools/behaviour_hashes.py --out after.json --compare before.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OFFICIAL_G = REPO / "tests" / "fixtures" / "official" / "official_G_ngf8.pth"
REAL_HE = REPO / "tests" / "fixtures" / "data" / "he_tiatoolbox_target.png"
SLIDE = REPO / "src" / "tdkstain" / "examples" / "he_cmu_small_region.svs"

# Every preset at tiny widths; structure (depths, scales, methods' options) as the preset has it.
TINY = {
    "tdkstain-paper": ["model.ngf=4", "model.n_blocks=1", "model.ndf=4", "model.nef=4", "model.estimator_blocks=1", "data.crop=96"],
    "tdkstain-no-membrane": ["model.ngf=4", "model.n_blocks=1", "model.ndf=4", "model.nef=4", "model.estimator_blocks=1", "data.crop=96"],
    "tdkstain-no-nuclei": ["model.ngf=4", "model.n_blocks=1", "model.ndf=4", "data.crop=96"],
    "tdkstain-no-both": ["model.ngf=4", "model.n_blocks=1", "model.ndf=4", "data.crop=96"],
    "demo-cpu": ["model.ngf=4", "model.n_blocks=1", "model.ndf=4", "model.nef=4", "data.crop=64"],
    "pix2pix": ["model.ngf=4", "model.ndf=4", "model.n_downsampling=6", "data.crop=64"],
    "pyramidpix2pix": ["model.ngf=4", "model.ndf=4", "model.n_blocks=1", "data.crop=64"],
    "pix2pixhd": ["model.ngf=2", "model.ndf=4", "model.n_blocks=1", "data.crop=64"],
    "cyclegan": ["model.ngf=4", "model.ndf=4", "model.n_blocks=1", "data.crop=64"],
    "asp": ["model.ngf=4", "model.ndf=4", "model.n_blocks=1", "data.crop=128"],
}
COMMON = ["data.batch=2", "data.val_size=64", "data.workers=0", "data.val_pairs=2", "train.device=cpu", "train.threads=1", "train.max_steps=3",
          "train.checkpoint_every=100", "train.val_every=2", "train.log_every=1", "train.tensorboard=false",
          "train.deterministic=true", "train.seed=3"]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def tdkstain(*args: str, cwd: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TDKSTAIN_WEIGHTS": str(cwd / "no-weights")}
    done = subprocess.run([sys.executable, "-m", "tdkstain", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"tdkstain {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")


def files_under(root: Path, suffixes: tuple[str, ...]) -> dict[str, str]:
    return {str(p.relative_to(root)): sha(p.read_bytes()) for p in sorted(root.rglob("*"))
            if p.is_file() and p.suffix.lower() in suffixes}


def tensors_of_checkpoint(run: Path) -> dict[str, str]:
    import torch

    newest = sorted((run / "checkpoints").glob("step_*.pt"))[-1]
    payload = torch.load(newest, map_location="cpu", weights_only=True)
    out = {"step": str(payload["step"])}

    def walk(prefix: str, value) -> None:
        if isinstance(value, torch.Tensor):
            out[prefix] = sha(value.detach().contiguous().cpu().numpy().tobytes())
        elif isinstance(value, dict):
            for key in sorted(value, key=str):
                walk(f"{prefix}.{key}", value[key])
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                walk(f"{prefix}.{i}", item)

    walk("networks", payload["networks"])
    walk("optimizers", {k: v["state"] for k, v in payload["optimizers"].items()})
    return out


def pyramid_pixels(tif: Path) -> dict[str, str]:
    import tifffile

    with tifffile.TiffFile(tif) as f:
        return {f"level{i}": sha(page.asarray().tobytes()) for i, page in enumerate(f.series[0].levels)}


def collect(work: Path) -> dict[str, dict[str, str]]:
    result: dict[str, dict[str, str]] = {}
    data = work / "data"
    tdkstain("synth", str(data), "--pairs", "8", "--size", "128", "--seed", "7", "--test-fraction", "0.25", cwd=work)
    result["synth"] = files_under(data, (".png", ".json"))
    for engine in ("numpy", "torch"):
        copy = work / f"extract-{engine}"
        shutil.copytree(data, copy)
        tdkstain("extract", str(copy), "--engine", engine, "--workers", "1", "--no-report", cwd=work)
        maps = {k: v for k, v in files_under(copy, (".png", ".csv", ".tif")).items() if "_IHC_" in k}
        result[f"extract.{engine}"] = maps
    he_dir = work / "he"
    he_dir.mkdir()
    shutil.copy(REAL_HE, he_dir / "real.png")
    tdkstain("translate", "--checkpoint", str(OFFICIAL_G), str(he_dir), "--out", str(work / "translated"),
             "--device", "cpu", "--tile", "256", "--overlap", "32", "--compile", "off", "--no-progress", cwd=work)
    result["translate.official"] = files_under(work / "translated", (".png",))
    tdkstain("slide", "--checkpoint", str(OFFICIAL_G), str(SLIDE), "--out", str(work / "slide.tif"), "--mpp", "4",
             "--tile", "128", "--overlap", "16", "--compile", "off", "--no-progress", cwd=work)
    result["slide.official"] = pyramid_pixels(work / "slide.tif")
    train_data = work / "extract-torch"
    for preset, tiny in TINY.items():
        run = work / "runs" / preset
        tdkstain("train", "--config", preset, "--data", str(train_data), "--out", str(run), "--no-progress", *tiny, *COMMON, cwd=work)
        result[f"train.{preset}"] = tensors_of_checkpoint(run)
        if preset == "demo-cpu":
            tdkstain("translate", "--checkpoint", str(run), str(data / "test_HE"), "--out", str(work / "demo_translated"),
                     "--device", "cpu", "--compile", "off", "--no-progress", cwd=work)
            result["translate.trained"] = files_under(work / "demo_translated", (".png",))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--compare", type=Path, help="an earlier JSON: print every difference, exit 1 if any")
    parser.add_argument("--keep", type=Path, help="keep the work folder here (default: a temporary one, removed)")
    args = parser.parse_args()
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        result = collect(args.keep)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            result = collect(Path(tmp))
    args.out.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    counts = {group: len(entries) for group, entries in result.items()}
    print(f"wrote {args.out}: " + ", ".join(f"{g} {n}" for g, n in counts.items()))
    if args.compare:
        before = json.loads(args.compare.read_text())
        diffs = []
        for group in sorted(set(before) | set(result)):
            a, b = before.get(group, {}), result.get(group, {})
            for key in sorted(set(a) | set(b)):
                if a.get(key) != b.get(key):
                    diffs.append(f"{group} {key}: {a.get(key)} -> {b.get(key)}")
        print(f"compared with {args.compare}: {len(diffs)} differences")
        for line in diffs[:50]:
            print("  " + line)
        return 1 if diffs else 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
