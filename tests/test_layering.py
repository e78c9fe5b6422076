"""Dependencies point one way (docs/ARCHITECTURE.md). Checked on the source, not by convention."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "tdkstain"

# module -> modules of ours it must never import (directly)
FORBIDDEN = {
    "networks": {"*"},
    "devices": {"networks", "objective", "training", "data", "methods", "metrics", "inference"},
    "stain": {"*"},
    "knowledge": {"networks", "objective", "training", "data", "distributed"},
    "nuclei": {"networks", "objective", "training", "data", "distributed"},
    "extraction": {"networks", "objective", "training", "data", "distributed"},
    "synth": {"networks", "objective", "training", "data", "distributed"},
    "metrics": {"networks", "objective", "training", "data", "distributed", "methods", "evaluation"},
    "evaluation": {"objective", "training", "data", "distributed", "methods"},
    "slides": {"objective", "training", "data", "distributed", "methods", "evaluation"},
}

# module -> the only modules of ours it may import: inference needs networks and checkpoints alone.
ALLOWED_ONLY = {
    "inference": {"networks", "checkpoints", "errors", "atomic", "images", "devices"},
}


def our_imports(path: Path) -> set[str]:
    """Names of tdkstain modules imported anywhere in ``path`` (top-level name after ``tdkstain.``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            names = [f"tdkstain.{node.module or ''}"]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "tdkstain" and len(parts) > 1 and parts[1]:
                found.add(parts[1])
    return found


def test_our_imports_parser_sees_both_forms(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("import tdkstain.stain\nfrom tdkstain import networks\nfrom tdkstain.errors import X\n")
    assert our_imports(src) == {"stain", "networks", "errors"}


@pytest.mark.parametrize("module", sorted(FORBIDDEN))
def test_module_respects_layering(module):
    path = PACKAGE / f"{module}.py"
    if (PACKAGE / module).is_dir():  # a subpackage: every file in it obeys the module's rule
        files = sorted((PACKAGE / module).rglob("*.py"))
    elif path.exists():
        files = [path]
    else:
        pytest.skip(f"{module}.py not present")
    imported = set().union(*(our_imports(f) for f in files)) - {module}
    forbidden = FORBIDDEN[module]
    if "*" in forbidden:
        assert not imported, f"{module} must import nothing of ours, imports {sorted(imported)}"
    else:
        assert not imported & forbidden, f"{module} imports {sorted(imported & forbidden)}"


@pytest.mark.parametrize("module", sorted(ALLOWED_ONLY))
def test_module_imports_only_what_it_needs(module):
    files = sorted((PACKAGE / module).rglob("*.py")) if (PACKAGE / module).is_dir() else [PACKAGE / f"{module}.py"]
    files = [f for f in files if f.exists()]
    if not files:
        pytest.skip(f"{module} not present")
    imported = set().union(*(our_imports(f) for f in files)) - {module}
    assert imported <= ALLOWED_ONLY[module], f"{module} imports {sorted(imported - ALLOWED_ONLY[module])}"


def test_nothing_imports_the_cli():
    offenders = [
        p.name
        for p in PACKAGE.rglob("*.py")
        if "cli" not in p.relative_to(PACKAGE).parts[:1] and p.name != "__main__.py" and "cli" in our_imports(p)
    ]
    assert not offenders, f"modules importing tdkstain.cli: {offenders}"


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
                if node.module in {"tdkstain", "tdkstain.errors"}:
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
