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
    "score": "score",
    "classify": "classify",
    "translate": "translate",
    "slide": "slide",
    "benchmark": "benchmark",
    "view": "view",
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


@contextlib.contextmanager
def _printable_stdout():
    """Printing a file name that is not valid UTF-8 never crashes a command.

    Python hands such a name over with surrogates (``"tile_\\udcff.png"``); a
    strict UTF-8 stdout (a UTF-8 locale) cannot encode them. While a command
    runs, such characters are printed as ``?`` instead; stderr already uses
    ``backslashreplace``, and a stdout that passes bytes through
    (``surrogateescape``, the C locale) is left alone.
    """
    stream = sys.stdout
    before = getattr(stream, "errors", None)
    changed = before == "strict" and hasattr(stream, "reconfigure")
    if changed:
        try:
            stream.reconfigure(errors="replace")
        except (AttributeError, ValueError, OSError):
            changed = False
    try:
        yield
    finally:
        if changed:
            with contextlib.suppress(AttributeError, ValueError, OSError):
                stream.reconfigure(errors=before)


def add_max_pixels_argument(parser: argparse.ArgumentParser) -> None:
    """``--max-pixels N``, the same in every command that reads the user's images (check, extract, translate, evaluate)."""
    parser.add_argument(
        "--max-pixels", type=_max_pixels_value, default=None, metavar="N",
        help="largest image accepted, in pixels, a guard against decompression bombs; raise it for genuine "
             "larger images (default: 178956970, Pillow's limit, about 13400 x 13400)",
    )


def max_pixels(args: argparse.Namespace) -> int:
    """The pixel limit ``--max-pixels`` asks for, or ``tdkstain.data.images.DEFAULT_MAX_PIXELS``."""
    value = getattr(args, "max_pixels", None)
    if value is not None:
        return int(value)
    from tdkstain.data.images import DEFAULT_MAX_PIXELS

    return DEFAULT_MAX_PIXELS


def _max_pixels_value(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of pixels, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 pixel, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        with _one_line_warnings(args.command), _printable_stdout():
            return int(args._run(args) or 0)
    except TdkstainError as err:
        print(f"tdkstain {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tdkstain {args.command}: interrupted; rerun the same command to continue.", file=sys.stderr)
        return 130
    except OSError as err:
        # An OSError met outside tdkstain.plumbing.atomic (a folder created up front, a log
        # appended to, a file or folder read): name the path and the fix. It is called a
        # write problem only when it was one (a file that cannot be read is not "a folder
        # that cannot be written"); os_error says neither when it cannot tell.
        from tdkstain.plumbing.atomic import os_error

        friendly = os_error(err)
        if friendly is None:
            raise
        print(f"tdkstain {args.command}: error: {friendly}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
