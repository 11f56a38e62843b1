"""One source for the model: the chapters' ``# @save`` cells and the blocks of ``utils/`` that copy them.

A chapter code cell whose first line is ``# @save utils/NAME.py`` defines code that the package
holds too (Dive into Deep Learning's ``#@save``). In ``utils/NAME.py`` every such cell appears,
in chapter order, as a block between two marker lines::

    # >>> chapters/05_implementation.ipynb, section 5.4: edit it there, then `make code`
    <the cell's code, without its # @save line>
    # <<< chapters/05_implementation.ipynb

What a module holds before its first block (docstring, imports) and after its last block is its
own. ``python book/chapter_code.py --check`` names every cell whose block differs (the cell's
line in the chapter's ``.md`` and the block's lines in the module); ``--write`` copies the
chapters' cells into the modules. ``tests/test_chapter_code.py`` runs the check.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
CHAPTERS = ROOT / "chapters"
#: ``# @save`` as the chapters' formatter writes it (``#@save``, as Dive into Deep Learning
#: writes it, is read too).
SAVE = re.compile(r"^#\s*@save\s+(utils/\w+\.py)\s*$")
BEGIN, END = "# >>> ", "# <<< "


@dataclasses.dataclass(frozen=True)
class SavedCell:
    """One ``# @save`` cell: where it is and what it holds."""

    notebook: str  # e.g. "chapters/05_implementation.ipynb"
    markdown_line: int  # line of the cell's opening fence in the paired .md (0: not found)
    section: str  # the heading above the cell
    module: str  # e.g. "utils/encoders.py"
    code: str  # the cell without its # @save line, ending with a newline

    @property
    def place(self) -> str:
        where = self.notebook.replace(".ipynb", ".md")
        return f"{where} line {self.markdown_line} ({self.section})"

    def block(self) -> str:
        """The block that stands for this cell in its module."""
        number = self.section.split()[0]
        where = f"section {number}" if re.fullmatch(r"\d+(\.\d+)*", number) else self.section
        return (f"{BEGIN}{self.notebook}, {where}: edit it there, then `make code`\n"
                f"{self.code}{END}{self.notebook}\n")


def _source(cell: dict) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def _markdown_cell_lines(notebook: pathlib.Path) -> list[int]:
    """The line of every code cell's opening fence in the notebook's paired .md."""
    markdown = notebook.with_suffix(".md")
    if not markdown.exists():
        return []
    return [number for number, line in enumerate(markdown.read_text("utf-8").splitlines(), 1)
            if line.startswith("```{code-cell}")]


def saved_cells(chapters: pathlib.Path = CHAPTERS) -> list[SavedCell]:
    """Every ``# @save`` cell of the chapters, in reading order."""
    found = []
    for notebook in sorted(chapters.glob("[0-9][0-9]_*.ipynb")):
        cells = json.loads(notebook.read_text("utf-8"))["cells"]
        fences = _markdown_cell_lines(notebook)
        section, code_index = notebook.stem, -1
        for cell in cells:
            text = _source(cell)
            if cell["cell_type"] == "markdown":
                headings = [line.lstrip("#").strip() for line in text.splitlines()
                            if re.match(r"#{1,3} ", line)]
                section = headings[-1] if headings else section
                continue
            if cell["cell_type"] != "code":
                continue
            code_index += 1
            first, _, rest = text.partition("\n")
            match = SAVE.match(first)
            if match:
                line = fences[code_index] if code_index < len(fences) else 0
                found.append(SavedCell(f"chapters/{notebook.name}", line, section,
                                       match.group(1), rest.rstrip() + "\n"))
    return found


@dataclasses.dataclass
class Module:
    """A module of ``utils/`` cut into its own head, its blocks and its own tail."""

    path: pathlib.Path
    head: str
    blocks: list[tuple[int, int, str]]  # (first line, last line, code) of each block
    tail: str

    @classmethod
    def read(cls, path: pathlib.Path) -> "Module":
        lines = path.read_text("utf-8").splitlines(keepends=True) if path.exists() else []
        head, blocks, tail, inside, start, code = [], [], [], False, 0, []
        for number, line in enumerate(lines, 1):
            if not inside and line.startswith(BEGIN):
                inside, start, code = True, number, []
                tail = []
            elif inside and line.startswith(END):
                inside = False
                blocks.append((start, number, "".join(code)))
            elif inside:
                code.append(line)
            elif blocks:
                tail.append(line)
            else:
                head.append(line)
        if inside:
            raise ValueError(f"{path}: the block opened at line {start} has no closing "
                             f"'{END.strip()}' line")
        return cls(path, "".join(head), blocks, "".join(tail))

    def written(self, cells: list[SavedCell]) -> str:
        """The module's text with ``cells`` as its blocks."""
        head = self.head.rstrip("\n") + "\n\n\n" if cells else self.head
        return head + "\n\n".join(cell.block() for cell in cells) + (
            "\n\n" + self.tail.lstrip("\n") if self.tail.strip() else "")


def _grouped(cells: list[SavedCell]) -> dict[str, list[SavedCell]]:
    modules: dict[str, list[SavedCell]] = {}
    for cell in cells:
        modules.setdefault(cell.module, []).append(cell)
    return modules


def _first_difference(expected: str, found: str) -> str:
    for number, (want, have) in enumerate(zip(expected.splitlines(), found.splitlines()), 1):
        if want != have:
            return f"line {number} of the cell reads {want.strip()!r}, the module has {have.strip()!r}"
    diff = list(difflib.unified_diff(expected.splitlines(), found.splitlines(), lineterm="", n=0))
    return "one is longer: " + " | ".join(line for line in diff[2:5])


def check(root: pathlib.Path = ROOT) -> list[str]:
    """One message per cell whose block in ``utils/`` differs, per block without its cell, and
    per module whose markers are out of date; empty when the two agree."""
    problems = []
    cells = saved_cells(root / "chapters")
    modules = _grouped(cells)
    for path in sorted((root / "utils").glob("*.py")):
        name = f"utils/{path.name}"
        if name not in modules and Module.read(path).blocks:
            modules[name] = []
    for name, module_cells in modules.items():
        module, before = Module.read(root / name), len(problems)
        for index, cell in enumerate(module_cells):
            if index >= len(module.blocks):
                problems.append(f"{cell.place} is a # @save cell for {name}, which has no block "
                                f"for it (it has {len(module.blocks)}); run `make code`")
                continue
            first, last, code = module.blocks[index]
            if code != cell.code:
                problems.append(f"{cell.place} and {name} lines {first}-{last} differ: "
                                f"{_first_difference(cell.code, code)}. Make them equal (edit the "
                                "chapter and run `make code` to copy it into utils/)")
        for first, last, _ in module.blocks[len(module_cells):]:
            problems.append(f"{name} lines {first}-{last} are a chapter block, but no # @save "
                            "cell of the chapters stands for it; run `make code`")
        text = (root / name).read_text("utf-8")
        if len(problems) == before and module.written(module_cells) != text:
            problems.append(f"{name}: the block markers are out of date (a section was renamed "
                            "or moved); run `make code`")
    return problems


def write(root: pathlib.Path = ROOT) -> list[str]:
    """Copy every ``# @save`` cell into its module; return the modules that changed."""
    changed = []
    for name, module_cells in _grouped(saved_cells(root / "chapters")).items():
        path = root / name
        text = Module.read(path).written(module_cells)
        if not path.exists() or path.read_text("utf-8") != text:
            path.write_text(text, "utf-8")
            changed.append(name)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--check", action="store_true", help="report differences, change nothing")
    action.add_argument("--write", action="store_true", help="copy the chapters' cells into utils/")
    args = parser.parse_args(argv)
    if args.write:
        changed = write()
        print("updated: " + ", ".join(changed) if changed else "utils/ already matches the chapters")
        return 0
    problems = check()
    for problem in problems:
        print(problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
