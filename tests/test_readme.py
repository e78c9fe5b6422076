"""Every `tdkstain ...` command shown in the README parses with the real CLI.

What each command does is tested by that command's own tests and by the demo;
this keeps the README from drifting away from the options that exist.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from tdkstain.cli import COMMANDS, build_parser

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_commands() -> list[str]:
    commands, block = [], False
    pending = ""
    for line in README.read_text().splitlines():
        if line.startswith("```"):
            block = not block
            continue
        if not block:
            continue
        line = pending + line.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        line = re.sub(r"\s+#.*$", "", line)  # trailing comments
        if line.startswith("torchrun "):
            line = line[line.index("-m tdkstain ") + len("-m "):]
        if line.startswith("tdkstain ") and not line.split()[1].startswith("-"):
            commands.append(line)
    return commands


def test_readme_shows_every_command():
    shown = {shlex.split(c)[1] for c in readme_commands()}
    assert set(COMMANDS) - {"demo"} <= shown, f"commands missing from the README: {set(COMMANDS) - shown}"


@pytest.mark.parametrize("command", readme_commands())
def test_readme_command_parses(command):
    args = build_parser().parse_args(shlex.split(command)[1:])
    assert args.command == shlex.split(command)[1]
