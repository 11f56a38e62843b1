"""Execute chapters top to bottom and store their outputs in place (`make execute`, `make book`).

    python book/execute.py chapters/05_implementation.ipynb [...] [--timeout SECONDS]

What nbconvert's ``--execute --inplace`` does, with two differences a reader of the stored
outputs sees:

* each cell's streams are stored as one stdout and one stderr output, with progress bars
  resolved to their last state (nbclient's ``coalesce_streams``: a bar's redraws, separated by
  carriage returns, would otherwise be stored one chunk each);
* a chapter that fails is not written: its file keeps the outputs of its last good run, and the
  message names the chapter, the cell and the error.

Prints how long each chapter took (``benchmarks/commands.py`` reads these lines), and each cell
that took longer than ``--slow`` seconds, as it finishes: where a chapter's time goes.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
import time

import nbclient
import nbformat
from nbclient.exceptions import CellExecutionError


def execute(path: pathlib.Path, timeout: int, slow: float = 30.0) -> float:
    """Run ``path`` in a fresh kernel, started in its own folder; store it; return the seconds.
    Cells that take longer than ``slow`` seconds are printed as they finish."""
    notebook = nbformat.read(path, as_version=4)
    started = time.perf_counter()
    cell_started = {}

    def on_cell_start(cell, cell_index):
        cell_started[cell_index] = time.perf_counter()

    def on_cell_executed(cell, cell_index, execute_reply):
        seconds = time.perf_counter() - cell_started.get(cell_index, started)
        if seconds > slow:
            first_line = cell.source.strip().splitlines()[0] if cell.source.strip() else ""
            print(f"   cell {cell_index:3d}: {seconds:5.0f} s  {first_line[:60]}", flush=True)

    client = nbclient.NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                                     coalesce_streams=True,
                                     on_cell_start=on_cell_start,
                                     on_cell_executed=on_cell_executed,
                                     resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    seconds = time.perf_counter() - started
    # Written next to the chapter, then renamed over it: an interrupted write loses nothing.
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=path.parent, suffix=".ipynb",
                                     delete=False) as temporary:
        nbformat.write(notebook, temporary)
    os.replace(temporary.name, path)
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="+", type=pathlib.Path)
    parser.add_argument("--timeout", type=int, default=3600,
                        help="seconds one cell may run before the chapter is stopped")
    parser.add_argument("--slow", type=float, default=30.0,
                        help="print each cell that takes longer than this many seconds")
    args = parser.parse_args(argv)
    for path in args.notebooks:
        print(f"== executing {path} (BOOK_PROFILE={os.environ.get('BOOK_PROFILE', 'auto')})",
              flush=True)
        try:
            seconds = execute(path, args.timeout, args.slow)
        except CellExecutionError as error:
            print(f"error: {path} failed and was left as it was; the failing cell and its "
                  f"error:\n{error}", file=sys.stderr)
            return 1
        print(f"   done in {seconds:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
