"""The published book as a reader's browser shows it, and its glossary.

The site is built once per session with ``book/build.sh`` (a build made earlier in the same
session from the current sources is reused), then every page of the table of contents is opened once in headless Chromium
(``book/browser_check.py`` holds the checks). ``BOOK_SKIP_SITE=1`` skips everything that needs
the build; without Chromium (Debian's ``chromium`` package, installed by ``make system-deps``)
the browser tests skip and say so.
"""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from test_book import NOT_YET_EXECUTED_BY_BOOK_EXECUTE

pytest.importorskip("bs4", reason="beautifulsoup4 (a dependency of nbconvert) is not installed")

ROOT = Path(__file__).resolve().parents[1]
BOOK_DIR = ROOT / "book"
SITE_DIR = BOOK_DIR / "_build" / "html"
LOCAL_MATHJAX = BOOK_DIR / "_mathjax" / "mathjax" / "tex-mml-chtml.js"
GLOSSARY = BOOK_DIR / "glossary.md"

# Collection imports this module before any test of the session runs: a site written after
# this moment was built by this session.
SESSION_START = time.time()

_spec = importlib.util.spec_from_file_location("browser_check", BOOK_DIR / "browser_check.py")
browser_check = importlib.util.module_from_spec(_spec)
sys.modules["browser_check"] = browser_check  # its dataclass looks itself up there
_spec.loader.exec_module(browser_check)

SKIP_SITE = os.environ.get("BOOK_SKIP_SITE") == "1"
CHROMIUM = browser_check.find_chromium()
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="chromium not found: install Debian's `chromium` package (`make system-deps` does) "
           "to check the rendered pages",
)

#: Terms the chapters rely on; each must have an entry in the glossary.
REQUIRED_TERMS = (
    "encoder", "decoder", "attention", "soft attention", "hard attention", "additive attention",
    "dot-product attention", "context vector", "teacher forcing", "beam search",
    "greedy decoding", "BLEU", "METEOR", "ROUGE-L", "CIDEr-D", "vocabulary", "padding mask",
    "embedding", "forget gate", "input gate", "output gate", "LSTM", "cross-entropy", "Adam",
    "backpropagation", "feature map", "backbone", "fine-tuning", "mixed precision",
)


def _sources() -> list[Path]:
    """What the site is built from: a build older than any of these is stale."""
    return [*BOOK_DIR.glob("*.md"), *BOOK_DIR.glob("*.yml"), *BOOK_DIR.glob("*.bib"),
            *(BOOK_DIR / "_static").glob("*"), BOOK_DIR / "build.sh",
            *(ROOT / "chapters").glob("*.ipynb"), *(ROOT / "chapters" / "figures").glob("*")]


def _built_in_this_session() -> bool:
    pages = [SITE_DIR / name for name in browser_check.toc_pages(SITE_DIR)]
    if not all(page.exists() for page in pages):
        return False
    built = min(page.stat().st_mtime for page in pages)
    return built >= SESSION_START and all(s.stat().st_mtime <= built for s in _sources())


@pytest.fixture(scope="module")
def site() -> Path:
    """The built HTML book: reused if this session already built it from the current sources."""
    if SKIP_SITE:
        pytest.skip("BOOK_SKIP_SITE=1")
    if shutil.which("npm") is None and not LOCAL_MATHJAX.exists():
        pytest.skip("npm is not installed and book/_mathjax/ is missing: cannot ship MathJax")
    if not _built_in_this_session():
        result = subprocess.run(
            ["bash", str(BOOK_DIR / "build.sh")], cwd=ROOT, capture_output=True, text=True,
            env={**os.environ, "PYTHON": sys.executable}, timeout=600,
        )
        log = re.sub(r"\x1b\[[0-9;]*m", "", f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
        assert result.returncode == 0, f"book/build.sh failed:\n{log}"
        BUILD_STDERR.append(result.stderr)
    return SITE_DIR


#: What book/build.sh wrote on stderr, when the fixture ran it in this session.
BUILD_STDERR: list[str] = []


@pytest.fixture(scope="module")
def rendered(site: Path) -> dict:
    """Every built page of the table of contents, opened once in Chromium; the intro and the
    chapter richest in formulas and images are also saved to book/_build/screenshots/."""
    if CHROMIUM is None:
        pytest.skip("chromium not found")
    names = [name for name in browser_check.toc_pages(site) if (site / name).exists()]
    screenshots = browser_check.screenshot_targets(names, site)
    return browser_check.render_all(CHROMIUM, site, names, screenshots)


def test_site_builds_with_local_mathjax(site: Path):
    """Every page of the table of contents is built, and MathJax is shipped with the site and
    loaded from it (the book is read offline)."""
    assert not any("WARNING: no local MathJax" in log for log in BUILD_STDERR), BUILD_STDERR
    index = site / "index.html"
    assert index.exists()
    redirect = re.search(r'url=([^"]+)"', index.read_text(encoding="utf-8"))
    if redirect:  # the root page is book/intro, index.html points at it
        target = redirect.group(1)
        assert (site / target).exists(), f"index.html redirects to a missing {target}"

    missing = [name for name in browser_check.toc_pages(site) if not (site / name).exists()]
    assert not missing, f"pages not built: {missing}"

    static = site / "_static" / "mathjax"
    assert (static / "tex-mml-chtml.js").exists()
    fonts = list((static / "output" / "chtml" / "fonts").rglob("*.woff"))
    assert fonts, "the MathJax fonts were not shipped"
    pages_with_mathjax = []
    for page in sorted(site.rglob("*.html")):
        html = page.read_text(encoding="utf-8")
        scripts = re.findall(r'<script[^>]*src="([^"]*mathjax[^"]*)"', html, flags=re.IGNORECASE)
        remote = [src for src in scripts if re.match(r"(https?:)?//", src)]
        assert not remote, f"{page.relative_to(site)} loads MathJax from the network: {remote}"
        if any("_static/mathjax/tex-mml-chtml.js" in src for src in scripts):
            pages_with_mathjax.append(page.name)
    assert "04_math.html" in pages_with_mathjax, "chapter 4 does not load the local MathJax"


def _report(problems: list[str]) -> str:
    return f"{len(problems)} problem(s):\n" + "\n".join(problems[:40])


# -- the glossary (no build needed) -------------------------------------------------------------

def glossary_entries() -> list[tuple[list[str], str]]:
    """(names, definition) of every entry of the ```{glossary} block in book/glossary.md."""
    text = GLOSSARY.read_text(encoding="utf-8")
    block = re.search(r"^```\{glossary\}\n(.*?)^```$", text, flags=re.M | re.S)
    assert block, "book/glossary.md has no ```{glossary} block"
    entries: list[tuple[list[str], str]] = []
    names: list[str] = []
    for line in block.group(1).splitlines():
        if not line.strip() or line.startswith(":"):
            continue
        if line.startswith((" ", "\t")):
            if names:  # the first line of a definition closes the list of names
                entries.append((names, ""))
                names = []
            entries[-1] = (entries[-1][0], f"{entries[-1][1]} {line.strip()}".strip())
        else:
            names.append(line.strip())
    assert not names, f"glossary names without a definition: {names}"
    return entries


def test_glossary_has_english_and_chinese_names_and_a_definition():
    entries = glossary_entries()
    assert len(entries) >= 40, f"only {len(entries)} glossary entries"
    for names, definition in entries:
        assert len(names) == 2, f"expected an English and a Chinese name, got {names}"
        english, chinese = names
        assert not re.search(r"[\u4e00-\u9fff]", english), f"{english!r} is not English"
        assert re.search(r"[\u4e00-\u9fff]", chinese), f"{english}: {chinese!r} has no Chinese"
        assert len(definition.split()) >= 8, f"{english}: definition too short: {definition!r}"
    english_names = [names[0].lower() for names, _ in entries]
    assert len(set(english_names)) == len(english_names), "a term is defined twice"
    missing = [term for term in REQUIRED_TERMS if term.lower() not in english_names]
    assert not missing, f"missing from the glossary: {missing}"


def test_glossary_is_in_the_toc_before_the_bibliography():
    toc = yaml.safe_load((BOOK_DIR / "_toc.yml").read_text(encoding="utf-8"))
    files = [entry.get("file") for entry in toc["chapters"]]
    assert "book/glossary" in files, "book/_toc.yml does not list book/glossary"
    assert files.index("book/glossary") + 1 == files.index("book/bibliography"), files


# -- the checks themselves, on a deliberately broken page ----------------------------------------

@pytest.mark.skipif(SKIP_SITE, reason="BOOK_SKIP_SITE=1")
@needs_chromium
def test_the_checks_catch_a_broken_page(tmp_path):
    from PIL import Image

    Image.new("RGB", (4, 3), "red").save(tmp_path / "good.png")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    (tmp_path / "page.html").write_text(
        '<html><head><title>t</title></head><body><main id="main">'
        '<h2 id="here">Here</h2><p>Raw $$x^2$$ and <span class="math">\\(a+b\\)</span>.</p>'
        '<img src="good.png"><img src="missing.png"><img src="corrupt.png">'
        '<img src="https://example.org/badge.svg"><img src="data:image/png;base64,AAAA">'
        '<a href="#here">ok</a><a href="page.html#nowhere">bad anchor</a>'
        '<a href="other.html">missing page</a><a href="https://example.org">remote</a>'
        '<div class="cell_output docutils container"><div class="output stream">'
        'ValueError: a message the chapter printed on purpose</div>'
        '<div class="output traceback highlight-ipythontb">'
        '<pre>Traceback (most recent call last):\nZeroDivisionError</pre></div></div>'
        "</main></body></html>",
        encoding="utf-8",
    )
    page = browser_check.render(CHROMIUM, tmp_path, "page.html")
    assert page.report is not None, "the probe script did not report"

    math = browser_check.math_problems(page)
    assert any("did not typeset" in p for p in math), math
    assert any("formula not typeset" in p and "a+b" in p for p in math), math
    assert any("raw TeX" in p and "$$x^2$$" in p for p in math), math

    images = browser_check.image_problems(page, tmp_path)
    flagged = sorted(re.findall(r"src='([^']+)'", " ".join(images)))
    assert flagged == ["corrupt.png", "data:image/png;base64,AAAA",
                       "https://example.org/badge.svg", "missing.png"], images

    links = browser_check.link_problems(tmp_path)
    assert len(links) == 3, links  # missing.png, page.html#nowhere, other.html
    assert not any("#here" in p or "good.png" in p or "example.org" in p for p in links), links

    outputs = browser_check.output_problems(page)
    assert len(outputs) == 1 and "Traceback" in outputs[0], outputs


# -- the built site -------------------------------------------------------------------------------

def test_every_page_of_the_toc_is_built(site):
    missing = [name for name in browser_check.toc_pages(site) if not (site / name).exists()]
    assert not missing, f"pages in book/_toc.yml that were not built: {missing}"


def test_relative_links_lead_to_files_and_anchors_of_the_build(site):
    problems = browser_check.link_problems(site)
    assert not problems, _report(problems)


@needs_chromium
def test_math_is_typeset_by_the_local_mathjax(rendered):
    problems = [p for page in rendered.values() for p in browser_check.math_problems(page)]
    assert not problems, _report(problems)
    with_math = [name for name, page in rendered.items() if "<mjx-container" in page.dom]
    assert with_math, "no page of the book has a typeset formula"


@needs_chromium
def test_every_image_is_shipped_with_the_site_and_loads(rendered, site):
    problems = [p for page in rendered.values() for p in browser_check.image_problems(page, site)]
    assert not problems, _report(problems)


@needs_chromium
def test_code_cells_fit_the_code_column(rendered):
    """No code cell makes the reader scroll sideways in a laptop's window (the source side of
    this, lines of at most CODE_WIDTH characters, is tests/test_book.py's)."""
    problems = [p for page in rendered.values() for p in browser_check.code_width_problems(page)]
    assert not problems, _report(problems)


@needs_chromium
def test_no_output_cell_shows_an_error(rendered):
    problems = [p for page in rendered.values() for p in browser_check.output_problems(page)]
    assert not problems, _report(problems)


@needs_chromium
def test_screenshots_are_kept(rendered, site):
    names = list(rendered)
    for path in browser_check.screenshot_targets(names, site).values():
        assert path.exists() and path.stat().st_size > 10_000, f"{path} is missing or empty"


def test_the_architecture_figure_is_on_the_pages_of_chapters_2_and_5(site):
    """The captioner's architecture figure, with its tensor shapes, is drawn by code in chapters
    2 and 5: on the site each page holds it as a captioned figure with an image."""
    from bs4 import BeautifulSoup

    pages = [("chapters/02_concepts.html", "fig-ch2-architecture")]
    # Chapter 5's stored outputs predate its figure cell until it is executed again (issue 17).
    if "05_implementation.ipynb" not in NOT_YET_EXECUTED_BY_BOOK_EXECUTE:
        pages.append(("chapters/05_implementation.html", "fig-ch5-architecture"))
    for page, name in pages:
        soup = BeautifulSoup((site / page).read_text(encoding="utf-8"), "html.parser")
        figure = soup.find(id=name)
        assert figure is not None, f"{page} has no element with id {name}"
        figure = figure if figure.name == "figure" else figure.find_parent("figure") or figure
        assert figure.find("img") is not None, f"{name} on {page} has no image"
        assert "tensor" in figure.get_text(" ") or "size" in figure.get_text(" "), figure.get_text()
