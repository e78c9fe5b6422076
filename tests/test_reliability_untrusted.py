"""Untrusted files: no code runs from a weights file or a YAML file, manifests stay in their folder, and
random input to the config parser, the manifest reader and the image loader gives a result or a
TdkstainError, never another exception (property-based, hypothesis).

The malicious ``.pth`` for the authors' generator is refused in
``tests/test_checkpoints.py::test_malicious_pickle_is_refused``; here the
trainer's own ``step_*.pt`` and a scan of every loader in the source tree.
"""

from __future__ import annotations

import ast
import functools
import io
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from tdkstain.training.config import Config, _known_keys, build_config, load_config
from tdkstain.plumbing.errors import TdkstainError
from tdkstain.data.images import read_rgb
from tdkstain.data.pairs import discover_pairs

SRC = Path(__file__).resolve().parents[1] / "src" / "tdkstain"
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class _CreatesAFile:
    """Unpickling this object creates ``target``: the classic pickle exploit, harmless here."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (Path.touch, (self.target,))


# ----------------------------------------------------------------------------- no code from files


@functools.cache
def _all_calls() -> list[tuple[Path, ast.Call]]:
    return [(path, node) for path in sorted(SRC.rglob("*.py"))
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))) if isinstance(node, ast.Call)]


def _calls(name: str) -> list[tuple[Path, ast.Call]]:
    """Every call ``X.name(...)`` or ``name(...)`` in the package source."""
    found = []
    for path, node in _all_calls():
        func = node.func
        called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if called == name:
            found.append((path, node))
    return found


def _where(path: Path, node: ast.AST) -> str:
    return f"{path.relative_to(SRC.parent)}:{node.lineno}"


def test_every_torch_load_in_the_source_is_weights_only():
    calls = [(p, c) for p, c in _calls("load") if isinstance(c.func, ast.Attribute)
             and isinstance(c.func.value, ast.Name) and c.func.value.id == "torch"]
    assert calls, "the scan found no torch.load at all: it is looking in the wrong place"
    for path, call in calls:
        flags = {k.arg: k.value for k in call.keywords}
        assert isinstance(flags.get("weights_only"), ast.Constant) and flags["weights_only"].value is True, (
            f"{_where(path, call)}: torch.load without weights_only=True can run code from the file"
        )


def test_no_unsafe_deserialisers_in_the_source():
    # YAML: only safe_load / safe_dump. pickle: never loaded. numpy: never with allow_pickle.
    for name in ("load", "unsafe_load", "full_load", "load_all"):
        for path, call in _calls(name):
            func = call.func
            if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
                assert func.value.id not in ("yaml", "pickle", "marshal", "dill", "cloudpickle"), (
                    f"{_where(path, call)}: {func.value.id}.{name} can build arbitrary objects"
                )
    for name in ("loads", "Unpickler"):
        for path, call in _calls(name):
            func = call.func
            assert not (isinstance(func, ast.Attribute) and getattr(func.value, "id", None) == "pickle"), _where(path, call)
    for path, call in _calls("load"):
        for keyword in call.keywords:
            if keyword.arg == "allow_pickle":
                assert isinstance(keyword.value, ast.Constant) and keyword.value.value is False, _where(path, call)
    # TorchScript archives are code: the one place that loads one (the FID Inception network)
    # checks the file's sha256 against the published file first (tdkstain.weights.files).
    jit = [_where(p, c) for p, c in _calls("load") if isinstance(c.func, ast.Attribute)
           and isinstance(c.func.value, ast.Attribute) and c.func.value.attr == "jit"]
    assert all(w.startswith("tdkstain/metrics/inception.py") for w in jit), jit


def test_inception_torchscript_with_the_wrong_digest_is_refused(tmp_path):
    from tdkstain.weights.files import KNOWN_WEIGHTS, find_weights

    fake = tmp_path / KNOWN_WEIGHTS["inception"].filename
    fake.write_bytes(b"PK\x03\x04 not the published network")
    with pytest.raises(TdkstainError, match="sha256|digest|match"):
        find_weights("inception", fake)


def test_malicious_training_checkpoint_is_refused_and_runs_nothing(tmp_path):
    from tdkstain.training import load_checkpoint, load_latest

    target = tmp_path / "pwned"
    run = tmp_path / "run"
    evil = run / "checkpoints" / "step_00000001.pt"
    evil.parent.mkdir(parents=True)
    torch.save({"format": "tdkstain.train-state/1", "step": 1, "hook": _CreatesAFile(target)}, evil)
    with pytest.raises(TdkstainError, match=r"step_00000001\.pt: not a readable training checkpoint"):
        load_checkpoint(evil)
    with pytest.raises(TdkstainError, match=r"step_00000001\.pt"):
        load_latest(run)  # what `tdkstain train` calls when it resumes a run folder
    assert not target.exists()
    # The same payload does run code when unpickled unsafely: the test would notice a regression.
    torch.load(evil, weights_only=False)
    assert target.exists()


def test_malicious_pickle_inside_safetensors_named_weights_is_refused(tmp_path):
    from tdkstain.weights import load_generator

    target = tmp_path / "pwned"
    evil = tmp_path / "generator.safetensors"
    torch.save({"hook": _CreatesAFile(target)}, evil)  # a pickle wearing a safetensors name
    with pytest.raises(TdkstainError, match=r"generator\.safetensors"):
        load_generator(evil)
    assert not target.exists()


# ----------------------------------------------------------------------------- config parser


KNOWN_KEYS = [k for k in _known_keys(Config)]
yaml_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.sampled_from(["1e-4", "[0.5, 0.9]", "{a: 1}", "null", "yes", "~", "'", "[", "!!python/none"]),
)
override_keys = st.one_of(
    st.sampled_from(KNOWN_KEYS),
    st.lists(st.text("abcdefgh_.", min_size=1, max_size=8), min_size=1, max_size=4).map(".".join),
    st.text(max_size=20),
)


def _override(key: str, value) -> str:
    text = value if isinstance(value, str) else yaml.safe_dump(value, default_flow_style=True).strip()
    if text.endswith("\n..."):
        text = text[: -len("\n...")]
    return f"{key}={text}"


@FUZZ
@given(st.lists(st.tuples(override_keys, yaml_scalars), max_size=6))
def test_random_overrides_give_a_config_or_a_tdkstain_error(pairs):
    overrides = [_override(k, v) for k, v in pairs]
    try:
        cfg = build_config({}, overrides)
    except TdkstainError as err:
        assert str(err)
    else:
        assert isinstance(cfg, Config)


yaml_trees = st.recursive(
    yaml_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(st.one_of(st.sampled_from(["model", "loss", "train", "data", "ngf", "lr", "method"]),
                                  st.text(max_size=6), st.integers()), children, max_size=4),
    ),
    max_leaves=12,
)


@FUZZ
@given(yaml_trees)
def test_random_yaml_documents_give_a_config_or_a_tdkstain_error(tree):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "random.yaml"
        try:
            path.write_text(yaml.safe_dump(tree))
        except (yaml.YAMLError, UnicodeEncodeError):
            return  # not representable as a YAML file
        try:
            cfg = load_config(str(path))
        except TdkstainError as err:
            assert "random.yaml" in str(err) or "random" in str(err)
        else:
            assert isinstance(cfg, Config)


@FUZZ
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=200))
def test_random_yaml_text_gives_a_config_or_a_tdkstain_error(text):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "random.yaml"
        path.write_text(text, encoding="utf-8")
        try:
            cfg = load_config(str(path))
        except TdkstainError as err:
            assert "random.yaml" in str(err)
        else:
            assert isinstance(cfg, Config)


# ----------------------------------------------------------------------------- manifest reader


_CELLS = ["he/a.png", "ihc/a.png", "he/b.png", "ihc/b.png", "../outside.png", "/etc/passwd", "he/../../outside.png",
          "C:\\x.png", "sub/../he/a.png", "", " ", "3+", "2+", "0", "train", "test", "tr ain", "he", "ihc", "label",
          "split", '"', "\x00", "he/missing.png", "..", "."]
csv_text = st.one_of(
    st.lists(st.lists(st.sampled_from(_CELLS), max_size=5).map(",".join), max_size=6).map("\n".join),
    st.tuples(st.sampled_from(["he,ihc", "he,ihc,label,split", "ihc,he,split", "HE , IHC", ""]),
              st.lists(st.lists(st.sampled_from(_CELLS), max_size=4).map(",".join), max_size=5).map("\n".join))
    .map(lambda t: t[0] + "\n" + t[1]),
    st.text(max_size=120),
)


@FUZZ
@given(csv_text)
def test_random_manifests_give_pairs_inside_the_folder_or_a_tdkstain_error(text):
    with tempfile.TemporaryDirectory() as folder:
        base = Path(folder) / "data"
        for name in ("he/a.png", "ihc/a.png", "he/b.png", "ihc/b.png"):
            (base / name).parent.mkdir(parents=True, exist_ok=True)
            (base / name).write_bytes(b"x")
        (Path(folder) / "outside.png").write_bytes(b"x")
        manifest = base / "pairs.csv"
        manifest.write_text(text, encoding="utf-8")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pairs = discover_pairs(manifest)
        except TdkstainError as err:
            assert str(err)
            return
        root = os.path.realpath(base)
        for pair in pairs:
            for path in (pair.he, pair.ihc):
                # Never outside the manifest's folder (allow_outside is off).
                assert os.path.realpath(path).startswith(root + os.sep), path


# ----------------------------------------------------------------------------- image loader


def _encoded(fmt: str, **kwargs) -> bytes:
    rgb = np.arange(12 * 10 * 3, dtype=np.uint8).reshape(12, 10, 3)
    buffer = io.BytesIO()
    if fmt == "TIFF16":
        tifffile.imwrite(buffer, (rgb.astype(np.uint16) * 257), photometric="rgb", **kwargs)
    elif fmt == "TIFFZ":
        tifffile.imwrite(buffer, rgb, photometric="rgb", compression="zlib", **kwargs)
    elif fmt == "TIFFPLANAR":
        tifffile.imwrite(buffer, np.moveaxis(rgb, 2, 0), photometric="rgb", planarconfig="separate")
    else:
        Image.fromarray(rgb).save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


_VALID = {
    "png": _encoded("PNG"),
    "jpg": _encoded("JPEG", quality=90),
    "progressive.jpg": _encoded("JPEG", progressive=True),
    "tif": _encoded("TIFF"),
    "tiffz.tif": _encoded("TIFFZ"),
    "tiff16.tif": _encoded("TIFF16"),
    "planar.tif": _encoded("TIFFPLANAR"),
    "bmp": _encoded("BMP"),
}


@st.composite
def mutated_images(draw) -> tuple[str, bytes]:
    """A valid PNG / JPEG / TIFF / BMP with a few bytes changed, cut, inserted or a header field overwritten."""
    name = draw(st.sampled_from(sorted(_VALID)))
    data = bytearray(_VALID[name])
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "cut", "insert", "field"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[at] = draw(st.integers(0, 255))
        elif kind == "cut":
            data = data[:at]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "field" and len(data) > 4:
            # Large values in width / height / offset / count fields reach the decoders' limits.
            at = draw(st.integers(0, min(len(data), 64) - 4))
            data[at : at + 4] = draw(st.sampled_from([b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff", b"\x00\x00\x00\x00",
                                                      b"\x00\x01\x00\x00", b"\x00\x00\xff\xff"]))
    return name, bytes(data)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_images())
def test_mutated_image_files_give_an_rgb_array_or_a_tdkstain_error(case):
    name, data = case
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"mutated.{name}"
        path.write_bytes(data)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                rgb = read_rgb(path, max_pixels=4_000_000)
        except TdkstainError as err:
            assert "mutated" in str(err)
        else:
            assert isinstance(rgb, np.ndarray) and rgb.dtype == np.uint8
            assert rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.shape[0] * rgb.shape[1] <= 4_000_000


def test_valid_seeds_of_the_mutations_decode():
    """The seeds themselves must read, or the mutation test above would only ever see errors."""
    with tempfile.TemporaryDirectory() as folder:
        for name, data in _VALID.items():
            path = Path(folder) / f"seed.{name}"
            path.write_bytes(data)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                assert read_rgb(path).shape == (12, 10, 3), name


def test_atheris_target_seeds_decode(tmp_path):
    """``fuzz/fuzz_loader.py`` (run by hand with atheris, see docs/RELIABILITY.md) starts from valid seeds."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("fuzz_loader", SRC.parents[1] / "fuzz" / "fuzz_loader.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.make_seeds(tmp_path)
    seeds = sorted(tmp_path.iterdir())
    assert len(seeds) >= 10
    for seed in seeds:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert read_rgb(seed).shape == (16, 12, 3), seed.name
