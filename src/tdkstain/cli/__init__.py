"""The ``tdkstain`` command line: one program, one subcommand per job.

Each subcommand lives in ``tdkstain.cli.<module>`` and defines ``HELP`` (one
line), ``add_arguments(parser)`` and ``run(args) -> int``. Those modules import
nothing heavy at module level, so ``tdkstain --help`` answers at once; the
science is imported inside ``run``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys

from tdkstain import __version__
from tdkstain.plumbing.errors import TdkstainError

# name on the command line -> module in tdkstain.cli. A literal registry:
# reading it tells you every command there is.
COMMANDS: dict[str, str] = {
    "synth": "synth",
    "check": "check",
    "extract": "extract",
    "train": "train",
    "import-checkpoint": "import_checkpoint",
    "demo": "demo",
    "evaluate": "evaluate",
    "classify": "classify",
    "translate": "translate",
    "slide": "slide",
    "benchmark": "benchmark",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tdkstain",
        description=(
            "Virtual HER2 IHC from H&E (TDKstain, MICCAI 2024). Typical flow: "
            "check DATA -> extract DATA -> train -> translate/slide -> evaluate. "
            "Run 'tdkstain COMMAND --help' for each command."
        ),
    )
    parser.add_argument("--version", action="version", version=f"tdkstain {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(f"tdkstain.cli.{module_name}")
        p = sub.add_parser(
            name,
            help=module.HELP,
            description=getattr(module, "DESCRIPTION", module.HELP),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


@contextlib.contextmanager
def _one_line_warnings(command: str):
    """Warnings print as ``tdkstain COMMAND: warning: ...`` (not Python's file:line header) while a command runs.

    ``formatwarning``, not ``showwarning``: recording contexts (tests) still see every warning.
    """
    import warnings

    before = warnings.formatwarning
    warnings.formatwarning = lambda message, category, filename, lineno, line=None: f"tdkstain {command}: warning: {message}\n"
    try:
        yield
    finally:
        warnings.formatwarning = before


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        with _one_line_warnings(args.command):
            return int(args._run(args) or 0)
    except TdkstainError as err:
        print(f"tdkstain {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tdkstain {args.command}: interrupted; rerun the same command to continue.", file=sys.stderr)
        return 130
    except OSError as err:
        # A full disk or a folder that refuses writes, met outside tdkstain.plumbing.atomic
        # (a folder created up front, a log appended to): name the file and the fix.
        from pathlib import Path

        from tdkstain.plumbing.atomic import write_error

        friendly = write_error(Path(err.filename), err, atomic=False) if err.filename else None
        if friendly is None:
            raise
        print(f"tdkstain {args.command}: error: {friendly}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
