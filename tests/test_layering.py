"""Dependencies point one way (docs/ARCHITECTURE.md), checked on what importing really loads.

Each package is imported in a fresh interpreter and ``sys.modules`` is read
afterwards, so an indirect import (A imports B, which imports C) counts as
much as a direct one.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "tdkstain"

# package -> the packages of ours that importing it may load (besides itself and tdkstain/__init__).
# Read top to bottom: each layer may use the layers above it, never those below.
ALLOWED: dict[str, set[str]] = {
    "plumbing": set(),
    "models": {"plumbing"},
    "data": {"plumbing"},
    "knowledge": {"plumbing", "data"},
    "weights": {"plumbing", "models"},
    "inference": {"plumbing", "models", "weights", "data"},
    "slides": {"plumbing", "models", "weights", "data", "inference"},
    "viewer": {"plumbing", "models", "weights", "data", "inference", "slides"},
    "metrics": {"plumbing", "data", "weights"},
    "synth": {"plumbing", "data", "knowledge"},
    "scoring": {"plumbing", "data", "knowledge", "slides", "models", "weights", "inference"},
    "methods": {"plumbing", "models", "weights"},
    "evaluation": {"plumbing", "data", "knowledge", "metrics", "weights", "models", "inference", "scoring", "slides"},
    "training": {"plumbing", "data", "models", "weights", "methods", "evaluation", "knowledge", "metrics", "inference",
                 "scoring", "slides"},
}
# What "training code" means for the inference packages: no method, optimiser step, config or trainer,
# and not the config library.
TRAINING_CODE = ("tdkstain.methods", "tdkstain.training", "tdkstain.workflows", "pydantic")

_PROBE = """
import importlib, json, sys
importlib.import_module(sys.argv[1])
print(json.dumps(sorted(sys.modules)))
"""


def loaded_by(module: str) -> list[str]:
    """Every module in ``sys.modules`` after ``import module`` in a fresh interpreter."""
    out = subprocess.run([sys.executable, "-c", _PROBE, module], capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def packages_of_ours(modules: list[str]) -> set[str]:
    return {m.split(".")[1] for m in modules if m.startswith("tdkstain.") and len(m.split(".")) > 1}


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_loads_only_the_layers_above_it(package):
    loaded = packages_of_ours(loaded_by(f"tdkstain.{package}")) - {package}
    extra = loaded - ALLOWED[package]
    assert not extra, f"importing tdkstain.{package} loads tdkstain.{', tdkstain.'.join(sorted(extra))}"


@pytest.mark.parametrize("package", ["inference", "slides", "weights", "models"])
def test_inference_needs_only_models_and_weights(package):
    loaded = loaded_by(f"tdkstain.{package}")
    training = [m for m in loaded if m.startswith(TRAINING_CODE)]
    assert not training, f"importing tdkstain.{package} loads training code: {training[:8]}"


def test_the_probe_sees_indirect_imports():
    # training imports methods only through its config; the probe must still see it.
    assert "tdkstain.methods.base" in loaded_by("tdkstain.training.config")


def test_every_package_is_classified():
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()} - {"cli", "workflows", "configs", "examples"}
    assert packages <= set(ALLOWED), f"add {sorted(packages - set(ALLOWED))} to ALLOWED with the layers it may use"


def test_nothing_imports_the_cli_or_the_workflows():
    """Only the command line imports tdkstain.workflows; nothing imports tdkstain.cli."""
    for path in PACKAGE.rglob("*.py"):
        top = path.relative_to(PACKAGE).parts[0]
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                if name.startswith("tdkstain.cli") and top not in ("cli", "workflows", "__main__.py"):
                    pytest.fail(f"{path.relative_to(PACKAGE)} imports {name}")
                if name.startswith("tdkstain.workflows") and top not in ("cli", "workflows"):
                    pytest.fail(f"{path.relative_to(PACKAGE)} imports {name}")


def test_cli_modules_import_only_stdlib_at_module_level():
    """So that `tdkstain --help` answers at once: heavy imports belong inside run()."""
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    for path in (PACKAGE / "cli").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if isinstance(node, ast.Import):
                roots = {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                roots = {node.module.split(".")[0]}
                if node.module in {"tdkstain", "tdkstain.plumbing.errors"}:
                    continue  # the version string and the error type are light
            else:
                continue
            assert roots <= stdlib, f"{path.name} imports {roots - stdlib} at module level"


def test_help_is_fast_and_lists_every_command():
    from tdkstain.cli import COMMANDS

    code = (
        "import sys, time; t=time.perf_counter(); from tdkstain.cli import build_parser; build_parser(); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in {'torch','skimage','scipy','matplotlib'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", f"building the CLI imported heavy modules: {out.stdout}"
    text = subprocess.run([sys.executable, "-m", "tdkstain", "--help"], capture_output=True, text=True, check=True).stdout
    for name in COMMANDS:
        assert name in text
