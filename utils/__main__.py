"""The book's command line: ``python -m utils <command> [options]``.

Commands:

``shapes``
    Write the Shapes captioning dataset, e.g.
    ``python -m utils shapes --out data/shapes --num-images 10000 --seed 0``.

A mistake in the input ends the program with one ``error: ...`` line on stderr and a non-zero
exit status, never a traceback. To add a command, write an ``_add_<name>_command`` function and
list it in ``_COMMANDS``.
"""
from __future__ import annotations

import argparse
import pathlib
import sys
from collections.abc import Callable, Sequence


class _OneLineErrorParser(argparse.ArgumentParser):
    """An argument parser that reports bad input as a single ``error:`` line (exit status 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {message}\n")


def _positive_int(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be zero or a positive integer, got {value}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _add_shapes_command(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "shapes",
        help="write the Shapes captioning dataset",
        description="Write the Shapes captioning dataset (PNG images + Karpathy-style JSON).",
    )
    parser.add_argument("--out", type=pathlib.Path, required=True, help="folder to write")
    parser.add_argument("--num-images", type=_positive_int, required=True, help="images in all")
    parser.add_argument("--seed", type=_non_negative_int, required=True, help="random seed")
    parser.add_argument("--image-size", type=_positive_int, default=64, help="pixels per side")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace a different Shapes dataset in --out"
    )
    parser.set_defaults(run=_run_shapes)


def _run_shapes(args: argparse.Namespace) -> None:
    from . import shapes  # imported late so `--help` stays instant

    json_path = shapes.write_dataset(
        args.out,
        args.num_images,
        args.seed,
        args.image_size,
        overwrite=args.overwrite,
        progress=sys.stderr.isatty(),
    )
    counts = ", ".join(f"{split} {n}" for split, n in shapes.split_sizes(args.num_images).items())
    print(f"shapes: {args.num_images} images ({counts}) in {json_path}")


_COMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (_add_shapes_command,)


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m utils`` with one subcommand per entry of ``_COMMANDS``."""
    parser = _OneLineErrorParser(prog="python -m utils", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_command in _COMMANDS:
        add_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return the exit status (0 success, 1 failed, 2 bad usage, 130 ^C)."""
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (ValueError, OSError) as error:
        # Expected failures (bad values, existing folders, unwritable paths) are the user's to
        # fix, so they get a sentence rather than a traceback.
        print(f"error: {_one_line(error)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted; nothing was left behind", file=sys.stderr)
        return 130
    return 0


def _one_line(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror and error.filename:
        return f"{error.strerror}: {error.filename}"
    return " ".join(str(error).split())


if __name__ == "__main__":
    sys.exit(main())
