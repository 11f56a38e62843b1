"""Structure of the chapters and of the HTML book.

These tests read the notebooks and the book's configuration; the built site is tested in
``tests/test_site.py``.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import jupytext
import nbformat
import pytest
import yaml

import utils

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS_DIR = ROOT / "chapters"
BOOK_DIR = ROOT / "book"

NOTEBOOKS = sorted(CHAPTERS_DIR.glob("[0-9][0-9]_*.ipynb"))
MARKDOWN_PAIRS = sorted(CHAPTERS_DIR.glob("[0-9][0-9]_*.md"))
CHAPTER_NAMES = sorted({path.stem for path in NOTEBOOKS + MARKDOWN_PAIRS})

# Every work the book cites; the build fails on a {cite} whose key is missing from the .bib.
EXPECTED_CITATIONS = (
    "vinyals2015show", "xu2015show", "bahdanau2015neural", "hochreiter1997long",
    "kingma2015adam", "papineni2002bleu", "banerjee2005meteor", "lin2004rouge",
    "vedantam2015cider", "karpathy2015deep", "chen2015microsoft",
)


def colab_url(notebook_name: str) -> str:
    """The Colab address that opens ``chapters/<notebook_name>`` from the book's repository."""
    owner_repo = utils.REPO_URL.removeprefix("https://github.com/").rstrip("/")
    return (
        f"https://colab.research.google.com/github/{owner_repo}/blob/main/chapters/{notebook_name}"
    )


def cell_contents(notebook: nbformat.NotebookNode) -> list[tuple[str, str]]:
    """Cell types and sources, the part of a notebook that its .md twin must reproduce."""
    return [(cell.cell_type, cell.source.strip()) for cell in notebook.cells]


def toc_files() -> list[str]:
    """Every ``file:`` entry of book/_toc.yml, root first, as written (no suffix)."""
    toc = yaml.safe_load((BOOK_DIR / "_toc.yml").read_text(encoding="utf-8"))
    files = [toc["root"]]

    def walk(entries):
        for entry in entries or []:
            if "file" in entry:
                files.append(entry["file"])
            walk(entry.get("sections"))
            walk(entry.get("chapters"))

    walk(toc.get("chapters"))
    for part in toc.get("parts", []):
        walk(part.get("chapters"))
    return files


def test_there_are_chapters():
    assert NOTEBOOKS, f"no chapter notebooks found in {CHAPTERS_DIR}"


@pytest.mark.parametrize("name", CHAPTER_NAMES)
def test_notebook_and_markdown_hold_the_same_cells(name):
    notebook_path, markdown_path = CHAPTERS_DIR / f"{name}.ipynb", CHAPTERS_DIR / f"{name}.md"
    sync_hint = f"run `jupytext --sync chapters/{name}.*`"
    assert notebook_path.exists(), f"{markdown_path.name} has no paired notebook; {sync_hint}"
    assert markdown_path.exists(), f"{notebook_path.name} has no paired .md; {sync_hint}"
    from_notebook = cell_contents(jupytext.read(notebook_path))
    from_markdown = cell_contents(jupytext.read(markdown_path))
    assert from_notebook == from_markdown, f"{name}.ipynb and {name}.md differ; {sync_hint}"


@pytest.mark.parametrize("name", CHAPTER_NAMES)
def test_both_files_use_the_python3_kernel(name):
    for path in (CHAPTERS_DIR / f"{name}.ipynb", CHAPTERS_DIR / f"{name}.md"):
        if path.exists():
            kernelspec = jupytext.read(path).metadata.get("kernelspec", {})
            assert kernelspec.get("name") == "python3", f"{path.name}: kernelspec {kernelspec}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_chapter_opens_with_title_badge_and_setup(path):
    cells = nbformat.read(path, as_version=4).cells
    assert len(cells) >= 3, f"{path.name} needs a title cell, a Setup heading and a Setup cell"
    title, setup_heading, setup_code = cells[:3]

    number = int(path.name[:2])
    assert title.cell_type == "markdown"
    assert re.match(rf"# {number}\. \S", title.source), (
        f"{path.name} must start with a '# {number}. Title' heading, not {title.source[:40]!r}"
    )
    assert f"]({colab_url(path.name)})" in title.source, (
        f"{path.name}: the title cell needs the Colab badge linking to {colab_url(path.name)}"
    )
    assert "colab-badge.svg" in title.source

    assert setup_heading.cell_type == "markdown"
    assert setup_heading.source.startswith("## Setup")

    assert setup_code.cell_type == "code"
    # the formatter may wrap the address in parentheses when it is long
    assert re.search(rf'BOOK_REPOSITORY = \(?\s*"{re.escape(utils.REPO_URL)}"',
                     setup_code.source), f"{path.name}: the Setup cell lacks BOOK_REPOSITORY"
    needles = ("IS_COLAB", 'BOOK_REVISION = "main"',
               "[colab] @ git+{BOOK_REPOSITORY}@{BOOK_REVISION}", "import utils", "utils.setup()")
    for needle in needles:
        assert needle in setup_code.source, f"{path.name}: the Setup cell lacks {needle!r}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_no_stored_errors(path):
    notebook = nbformat.read(path, as_version=4)
    for index, cell in enumerate(notebook.cells):
        for output in cell.get("outputs", []):
            assert output.output_type != "error", (
                f"{path.name}, cell {index}: stored {output.ename}: {output.evalue}"
            )


#: Lines a reader should never see in a stored output: TensorFlow's and absl's C++ log lines
#: (``E0000 00:00:...``, the absl start-up notice, oneDNN and CUDA notices) and Python warnings.
NOISE = re.compile(r"^([EWIF]\d{4} \d\d:\d\d:|WARNING: All log messages before absl"
                   r"|.*oneDNN custom operations|.*cuda_(?:dnn|blas|fft)|.*Unable to register"
                   r"|.*\w+Warning: )", re.MULTILINE)


def stored_output_defects(notebook: nbformat.NotebookNode) -> list[str]:
    """What is wrong with a notebook's stored outputs, one line per defect: log noise, progress
    bars stored as their redraws (carriage returns, backspaces), a stream split into chunks."""
    defects = []
    for index, cell in enumerate(notebook.cells):
        streams = [output for output in cell.get("outputs", []) if output.output_type == "stream"]
        names = [output.name for output in streams]
        for name in sorted(set(names)):
            if names.count(name) > 1:
                defects.append(f"cell {index}: {name} stored in {names.count(name)} chunks")
        for output in streams:
            for match in NOISE.finditer(output.text):
                line = output.text[match.start():].splitlines()[0]
                defects.append(f"cell {index}: log line in {output.name}: {line[:90]!r}")
            if "\r" in output.text or "\b" in output.text:
                defects.append(f"cell {index}: a progress bar's redraws in {output.name}")
    return defects


def test_stored_output_defects_are_found():
    """The check itself, on a made-up notebook holding each defect once."""
    notebook = nbformat.v4.new_notebook()
    stream = nbformat.v4.new_output
    notebook.cells = [nbformat.v4.new_code_cell("x", outputs=[
        stream("stream", name="stderr", text="E0000 00:00:1795744096.611619 node_def_util.cc:682] x\n"),
        stream("stream", name="stdout", text="Epoch 1/5\n"),
        stream("stream", name="stdout", text="Shapes:  5%|| 534/10000\rShapes: 100%||\n")]),
        nbformat.v4.new_code_cell("y", outputs=[stream("stream", name="stdout", text="fine\n")])]
    defects = stored_output_defects(notebook)
    assert len(defects) == 3 and all(line.startswith("cell 0:") for line in defects), defects
    assert not stored_output_defects(nbformat.v4.new_notebook(cells=[notebook.cells[1]]))


#: Chapters whose stored outputs predate book/execute.py and utils.quiet_tensorflow: none.
NOT_YET_EXECUTED_BY_BOOK_EXECUTE: set[str] = set()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_stored_outputs_show_only_what_the_prose_talks_about(path):
    """`make book` stores one stream per cell with progress bars resolved to their last state
    (nbclient's ``coalesce_streams``), and ``utils.setup`` keeps TensorFlow's logs quiet."""
    if path.name in NOT_YET_EXECUTED_BY_BOOK_EXECUTE:
        pytest.skip(f"{path.name} still holds outputs from before book/execute.py: "
                    f"`make execute CHAPTERS=chapters/{path.name}` refreshes them")
    defects = stored_output_defects(nbformat.read(path, as_version=4))
    assert not defects, f"{path.name}:\n" + "\n".join(defects[:20])


def test_toc_lists_exactly_the_chapters():
    files = toc_files()
    # Chapters are built from their notebooks (the .md twins are excluded from the site).
    missing = [
        file for file in files
        if not (ROOT / f"{file}.ipynb").exists()
        and (file.startswith("chapters/") or not any(ROOT.glob(f"{file}.*")))
    ]
    assert not missing, f"book/_toc.yml lists pages whose source does not exist: {missing}"
    listed = {file.removeprefix("chapters/") for file in files if file.startswith("chapters/")}
    unlisted = sorted({path.stem for path in NOTEBOOKS} - listed)
    assert not unlisted, f"chapters missing from book/_toc.yml: {unlisted}"
    assert len(files) == len(set(files)), "book/_toc.yml lists a page twice"


def glossary_entries() -> list[set[str]]:
    """The entries of book/glossary.md, each as the set of its names (English and 中文),
    lower-cased as Sphinx matches them."""
    text = (BOOK_DIR / "glossary.md").read_text(encoding="utf-8")
    block = re.search(r"```\{glossary\}\n(.*?)\n```", text, re.DOTALL).group(1)
    entries, names, defined = [], set(), False
    for line in block.splitlines():
        if not line.strip() or line.startswith(":"):
            continue
        if line[0].isspace():  # a definition line: the names above it are complete
            defined = True
            continue
        if defined:
            entries.append(names)
            names, defined = set(), False
        names.add(line.strip().lower())
    entries.append(names)
    return entries


def term_links(text: str) -> list[str]:
    """The targets of MyST {term} roles: {term}`beam search`, {term}`beams <beam search>`."""
    return [(target or plain).strip().lower() for plain, target in
            re.findall(r"\{term\}`([^`<]*?)(?:\s*<([^`>]+)>)?`", text)]


def test_term_links_are_read_as_sphinx_reads_them():
    assert term_links("a {term}`Beam search` and {term}`beams <beam search>`, {term}`束搜索`") == [
        "beam search", "beam search", "束搜索"]


def test_every_glossary_term_is_linked_from_a_chapter_and_every_link_resolves():
    entries = glossary_entries()
    names = set().union(*entries)
    assert len(entries) >= 60 and all(len(entry) >= 2 for entry in entries), (
        "every glossary entry has an English and a Chinese name")
    pages = [*sorted(CHAPTERS_DIR.glob("[0-9][0-9]_*.md")), BOOK_DIR / "intro.md",
             BOOK_DIR / "glossary.md"]
    used = set()
    for page in pages:
        links = term_links(page.read_text(encoding="utf-8"))
        unknown = sorted(set(links) - names)
        assert not unknown, f"{page.name} links terms the glossary lacks: {unknown}"
        if page.name != "glossary.md":
            used.update(links)
    unused = [sorted(entry)[0] for entry in entries if not entry & used]
    assert not unused, f"glossary terms no chapter links to: {unused}"


def test_every_reference_is_in_the_bibliography_and_cited():
    bibliography = (BOOK_DIR / "references.bib").read_text(encoding="utf-8")
    keys = set(re.findall(r"@\w+\{([^,\s]+),", bibliography))
    intro = (BOOK_DIR / "intro.md").read_text(encoding="utf-8")
    cited = set(re.findall(r"\{cite(?::\w+)?\}`([^`]+)`", intro))
    cited = {key.strip() for group in cited for key in group.split(",")}
    expected = set(EXPECTED_CITATIONS)
    assert expected <= keys, f"missing from references.bib: {sorted(expected - keys)}"
    assert expected <= cited, f"not cited in book/intro.md: {sorted(expected - cited)}"


# -- every chapter closes the loop: a summary, then exercises with worked answers ----------------

#: The widest code line allowed in a chapter: the site's code column, measured by
#: tests/test_site.py in a 1280-pixel window, shows about 77 characters. The formatter's setting
#: for the chapters, chapters/ruff.toml, agrees.
CODE_WIDTH = 77


def chapter_ending(notebook: nbformat.NotebookNode) -> dict:
    """The chapter's closing sections as a reader meets them: the ``## `` headings in order, the
    Summary's bullets and, per exercise of the Exercises section, whether a collapsed
    (``hide-cell``) code cell after its statement works out its answer."""
    headings, bullets, exercises, section = [], [], [], None
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("## "):
                    section = line[3:].strip()
                    headings.append(section)
                elif section == "Summary" and line.startswith("- "):
                    bullets.append(line[2:])
                elif section == "Exercises" and (found := re.match(r"\*\*(\d+)\. ", line)):
                    exercises.append({"number": int(found[1]), "answered": False})
        elif (section == "Exercises" and exercises
              and "hide-cell" in cell.metadata.get("tags", [])):
            exercises[-1]["answered"] = exercises[-1]["answered"] or "assert" in cell.source
    return {"headings": headings, "bullets": bullets, "exercises": exercises}


def ending_defects(notebook: nbformat.NotebookNode) -> list[str]:
    ending = chapter_ending(notebook)
    defects = []
    if ending["headings"][-2:] != ["Summary", "Exercises"]:
        defects.append(f"the last sections must be Summary, Exercises; they are "
                       f"{ending['headings'][-2:]}")
    if not 5 <= len(ending["bullets"]) <= 8:
        defects.append(f"the Summary has {len(ending['bullets'])} bullets, not 5 to 8")
    numbers = [exercise["number"] for exercise in ending["exercises"]]
    if not 4 <= len(numbers) <= 8 or numbers != list(range(1, len(numbers) + 1)):
        defects.append(f"the Exercises are numbered {numbers}, not 1, 2, ... (4 to 8 of them)")
    answered = sum(exercise["answered"] for exercise in ending["exercises"])
    if 2 * answered < len(numbers):
        defects.append(f"only {answered} of {len(numbers)} exercises have a worked answer (a "
                       f"hide-cell code cell that asserts its result)")
    return defects


def test_ending_defects_are_found():
    def notebook(*cells):
        return nbformat.v4.new_notebook(cells=list(cells))

    md, code = nbformat.v4.new_markdown_cell, nbformat.v4.new_code_cell

    def answer():
        return code("assert 1 + 1 == 2", metadata={"tags": ["hide-cell"]})

    summary = md("## Summary\n\n" + "\n".join(f"- point {i}\n  more" for i in range(5)))
    exercises = md("## Exercises\n\n**1. One.** Do it.")
    summary_again, exercises_again = md(summary.source), md(exercises.source)
    good = notebook(md("## 1.1 Text"), summary, exercises, answer(),
                    md("**2. Two.** Do it.\n\n**3. Three.** And this."), answer(),
                    md("**4. Four.** A project."))
    assert ending_defects(good) == []
    no_assert = code("print(2)", metadata={"tags": ["hide-cell"]})
    shown = code("assert True")
    weak = notebook(summary, exercises, no_assert, md("**2. Two.**\n\n**3. Three.**"), shown,
                    md("**4. Four.**"), answer())
    assert any("only 1 of 4" in defect for defect in ending_defects(weak))
    assert any("Summary, Exercises" in defect
               for defect in ending_defects(notebook(exercises_again, summary_again)))
    short = notebook(md("## Summary\n\n- one"), md("## Exercises\n\n**1. A.**\n\n**3. B.**"))
    assert len(ending_defects(short)) == 3


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_chapter_ends_with_a_summary_and_exercises_with_worked_answers(path):
    defects = ending_defects(nbformat.read(path, as_version=4))
    assert not defects, f"{path.name}: " + "; ".join(defects)


def test_the_formatter_wraps_code_at_the_width_the_site_shows():
    setting = (CHAPTERS_DIR / "ruff.toml").read_text(encoding="utf-8")
    assert re.search(rf"^line-length = {CODE_WIDTH}$", setting, re.MULTILINE), (
        f"chapters/ruff.toml: line-length must be {CODE_WIDTH}, the code column's width")


def test_the_chapters_code_is_as_the_formatter_writes_it():
    """`make format` (ruff format with chapters/ruff.toml) has the last word on the chapters'
    code layout, so that every chapter wraps its code the same way."""
    ruff = Path(sys.executable).with_name("ruff")
    if not ruff.exists():
        pytest.skip("ruff is not installed in this environment (requirements-dev.txt has it)")
    result = subprocess.run([str(ruff), "format", "--check", "--config",
                             str(CHAPTERS_DIR / "ruff.toml"), *map(str, NOTEBOOKS)],
                            capture_output=True, text=True)
    assert result.returncode == 0, (
        "chapters whose code is not formatted (run `make format`, which formats the "
        "notebooks and syncs their .md files):\n" + result.stdout + result.stderr)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_code_cells_fit_the_sites_code_column(path):
    notebook = nbformat.read(path, as_version=4)
    wide = [f"cell {index}: {line.strip()[:50]}... ({len(line)} characters)"
            for index, cell in enumerate(notebook.cells) if cell.cell_type == "code"
            for line in cell.source.splitlines() if len(line) > CODE_WIDTH]
    assert not wide, (f"{path.name}: {len(wide)} code lines are wider than {CODE_WIDTH} "
                      f"characters, the site's code column (wrap them in the .md):\n"
                      + "\n".join(wide))
