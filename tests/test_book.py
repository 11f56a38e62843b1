"""Structure of the chapters and of the HTML book.

The fast tests read the notebooks and the book's configuration; one slow test builds the site
with ``book/build.sh`` (skip it with ``BOOK_SKIP_SITE=1``).
"""
from __future__ import annotations

import os
import re
import shutil
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
SITE_DIR = BOOK_DIR / "_build" / "html"
LOCAL_MATHJAX = BOOK_DIR / "_mathjax" / "mathjax" / "tex-mml-chtml.js"

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
    needles = ("IS_COLAB", f'BOOK_REPOSITORY = "{utils.REPO_URL}"', 'BOOK_REVISION = "main"',
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


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_stored_outputs_show_only_what_the_prose_talks_about(path):
    """`make book` stores one stream per cell with progress bars resolved to their last state
    (nbclient's ``coalesce_streams``), and ``utils.setup`` keeps TensorFlow's logs quiet."""
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


def test_every_reference_is_in_the_bibliography_and_cited():
    bibliography = (BOOK_DIR / "references.bib").read_text(encoding="utf-8")
    keys = set(re.findall(r"@\w+\{([^,\s]+),", bibliography))
    intro = (BOOK_DIR / "intro.md").read_text(encoding="utf-8")
    cited = set(re.findall(r"\{cite(?::\w+)?\}`([^`]+)`", intro))
    cited = {key.strip() for group in cited for key in group.split(",")}
    expected = set(EXPECTED_CITATIONS)
    assert expected <= keys, f"missing from references.bib: {sorted(expected - keys)}"
    assert expected <= cited, f"not cited in book/intro.md: {sorted(expected - cited)}"


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("BOOK_SKIP_SITE") == "1", reason="BOOK_SKIP_SITE=1")
def test_site_builds_with_local_mathjax():
    if shutil.which("npm") is None and not LOCAL_MATHJAX.exists():
        pytest.skip("npm is not installed and book/_mathjax/ is missing: cannot ship MathJax")
    result = subprocess.run(
        ["bash", str(BOOK_DIR / "build.sh")], cwd=ROOT, capture_output=True, text=True,
        env={**os.environ, "PYTHON": sys.executable}, timeout=600,
    )
    log = re.sub(r"\x1b\[[0-9;]*m", "", f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    assert result.returncode == 0, f"book/build.sh failed:\n{log}"
    assert "WARNING: no local MathJax" not in result.stderr, result.stderr

    index = SITE_DIR / "index.html"
    assert index.exists()
    redirect = re.search(r'url=([^"]+)"', index.read_text(encoding="utf-8"))
    if redirect:  # the root page is book/intro, index.html points at it
        target = redirect.group(1)
        assert (SITE_DIR / target).exists(), f"index.html redirects to a missing {target}"

    pages = [SITE_DIR / f"{file}.html" for file in toc_files()]
    missing = [str(page.relative_to(SITE_DIR)) for page in pages if not page.exists()]
    assert not missing, f"pages not built: {missing}"

    static = SITE_DIR / "_static" / "mathjax"
    assert (static / "tex-mml-chtml.js").exists()
    fonts = list((static / "output" / "chtml" / "fonts").rglob("*.woff"))
    assert fonts, "the MathJax fonts were not shipped"
    pages_with_mathjax = []
    for page in sorted(SITE_DIR.rglob("*.html")):
        html = page.read_text(encoding="utf-8")
        scripts = re.findall(r'<script[^>]*src="([^"]*mathjax[^"]*)"', html, flags=re.IGNORECASE)
        remote = [src for src in scripts if re.match(r"(https?:)?//", src)]
        assert not remote, f"{page.relative_to(SITE_DIR)} loads MathJax from the network: {remote}"
        if any("_static/mathjax/tex-mml-chtml.js" in src for src in scripts):
            pages_with_mathjax.append(page.name)
    assert "04_math.html" in pages_with_mathjax, "chapter 4 does not load the local MathJax"
