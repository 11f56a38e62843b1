"""Check the built HTML book the way a reader's browser shows it.

    .venv/bin/python book/browser_check.py                 (after `make site`)
    .venv/bin/python book/browser_check.py path/to/html    (another build)

Every page of the table of contents is opened once in headless Chromium, and the checks read the
page *after* its scripts ran: the formulas must be typeset by MathJax (no raw ``\\(`` or ``$$``
left in the text), every local image must have loaded, and no output cell may show a
traceback. A static check, which needs no browser, follows every relative ``href``/``src`` of
every built page: each must lead to a file of the build (and to an ``id`` that exists there,
when it names one). Screenshots of the intro and of one chapter are written to
``book/_build/screenshots/``.

The script prints one line per problem and exits with status 1 if there is any.
``tests/test_site.py`` runs the same checks under pytest.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import unquote, urlsplit

import yaml
from bs4 import BeautifulSoup

ROOT = Path(__file__).resolve().parents[1]
SITE_DIR = ROOT / "book" / "_build" / "html"
SCREENSHOT_DIR = ROOT / "book" / "_build" / "screenshots"
TOC = ROOT / "book" / "_toc.yml"

#: The flags the design notes found reliable for a headless, offline, sandbox-less machine.
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--no-first-run", "--disable-extensions", "--mute-audio", "--hide-scrollbars",
    "--disable-dev-shm-usage",  # containers often have a tiny /dev/shm
)
#: Virtual time the page gets to run its scripts (MathJax) before the DOM is dumped.
VIRTUAL_TIME_MS = 8000

#: Elements whose text is code or already typeset math: raw TeX there is not a rendering fault.
_NOT_PROSE = ("pre", "code", "script", "style", "textarea", "mjx-container", "svg", "math")
#: Untypeset TeX: display/inline delimiters, environments, or $...$ around a TeX command.
_RAW_TEX = re.compile(r"\\\(|\\\)|\\\[|\\\]|\$\$|\\begin\{|\$[^$\s][^$]*\\[A-Za-z]+[^$]*\$")
_URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")

# Injected at the end of <body>: once the page has loaded and MathJax has finished its first
# typesetting pass, write what the browser knows about every image into the DOM, where
# --dump-dom can read it.
_PROBE = """
<script>
(function () {
  function report(mathjax) {
    var images = Array.prototype.map.call(document.images, function (img) {
      return {src: img.getAttribute("src"), url: img.currentSrc || img.src,
              complete: img.complete, naturalWidth: img.naturalWidth};
    });
    // Code cells wider than the code column (the reader would have to scroll sideways).
    var wide = Array.prototype.filter.call(
      document.querySelectorAll(".cell_input pre"),
      function (pre) { return pre.scrollWidth > pre.clientWidth + 1; }
    ).map(function (pre) {
// its first line, in letters and digits only, to name the cell
      var first = pre.textContent.split(String.fromCharCode(10))[0];
      return {scrollWidth: pre.scrollWidth, clientWidth: pre.clientWidth,
              line: first.replace(/[^A-Za-z0-9_ .(=]/g, " ").slice(0, 60)};
    });
    var columns = Array.prototype.map.call(
      document.querySelectorAll(".cell_input pre"),
      function (pre) { return pre.clientWidth; });
    var out = document.createElement("script");
    out.type = "application/json";
    out.id = "browser-check-report";
    out.textContent = JSON.stringify({mathjax: mathjax, images: images, wide_code: wide,
                                      code_column_px: columns.length ? Math.min.apply(null, columns) : null});
    document.body.appendChild(out);
  }
  window.addEventListener("load", function () {
    var mj = window.MathJax;
    if (mj && mj.startup && mj.startup.promise) {
      mj.startup.promise.then(function () { report("typeset"); },
                              function (error) { report("failed: " + error); });
    } else {
      report(mj ? "not started" : "absent");
    }
  });
})();
</script>
"""


@dataclasses.dataclass
class RenderedPage:
    """One page as Chromium left it: its DOM after scripts ran, and what the probe saw."""

    name: str                 # path inside the site, e.g. "chapters/04_math.html"
    built_html: str           # the file as jupyter-book wrote it
    dom: str                  # the DOM after the page's scripts ran
    report: dict | None       # the probe's findings; None if it never reported

    @functools.cached_property
    def soup(self) -> BeautifulSoup:
        """The rendered DOM, parsed once (the checks only read it)."""
        return BeautifulSoup(self.dom, "html.parser")


def find_chromium() -> str | None:
    """The Chromium (or Chrome) executable: ``$BOOK_CHROMIUM``, else the first one on PATH."""
    candidates = [os.environ.get("BOOK_CHROMIUM", ""), "chromium", "chromium-browser",
                  "google-chrome", "google-chrome-stable"]
    for candidate in candidates:
        if candidate and (path := shutil.which(candidate)):
            return path
    return None


def toc_pages(site_dir: Path = SITE_DIR, toc: Path = TOC) -> list[str]:
    """The HTML pages of the table of contents, root first, as paths inside ``site_dir``."""
    config = yaml.safe_load(toc.read_text(encoding="utf-8"))
    files = [config["root"]]

    def walk(entries: Iterable[dict]) -> None:
        for entry in entries:
            if "file" in entry:
                files.append(entry["file"])
            walk(entry.get("sections", []))
            for part in entry.get("parts", []):
                walk(part.get("chapters", []))

    walk(config.get("chapters", []))
    for part in config.get("parts", []):
        walk(part.get("chapters", []))
    return [f"{Path(file).with_suffix('')}.html" for file in files]


def _run_chromium(chromium: str, args: list[str], timeout: float) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="browser-check-profile-") as profile:
        return subprocess.run(
            [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
            capture_output=True, text=True, timeout=timeout, check=False,
        )


def render(chromium: str, site_dir: Path, name: str, screenshot: Path | None = None,
           timeout: float = 90) -> RenderedPage:
    """Open one built page in headless Chromium and return its DOM after the scripts ran.

    The page is copied, with the probe script added and a ``<base>`` pointing at its folder
    in the build (so every relative URL still resolves there), into a temporary folder: the
    build itself is never modified. With ``screenshot``, the same browser call also saves a
    PNG of the page (1280 x 2000 pixels) there.
    """
    page = site_dir / name
    built_html = page.read_text(encoding="utf-8")
    base = f'<base href="{page.parent.resolve().as_uri()}/">'
    instrumented = re.sub(r"<head([^>]*)>", lambda m: f"<head{m.group(1)}>{base}", built_html,
                          count=1)
    instrumented = instrumented.replace("</body>", f"{_PROBE}</body>", 1)
    # A laptop's window: the layout (sidebars, code column) a reader most often sees.
    args = [f"--virtual-time-budget={VIRTUAL_TIME_MS}", "--window-size=1280,2000"]
    if screenshot is not None:
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        screenshot.unlink(missing_ok=True)
        args += [f"--screenshot={screenshot.resolve()}"]
    with tempfile.TemporaryDirectory(prefix="browser-check-page-") as folder:
        copy = Path(folder) / page.name
        copy.write_text(instrumented, encoding="utf-8")
        result = _run_chromium(chromium, [*args, "--dump-dom", copy.as_uri()], timeout)
    if result.returncode != 0 or "<html" not in result.stdout:
        raise RuntimeError(f"chromium could not render {name} (exit {result.returncode}):\n"
                           f"{result.stderr[-2000:]}")
    if screenshot is not None and not (screenshot.exists() and screenshot.stat().st_size):
        raise RuntimeError(f"chromium wrote no screenshot of {name}:\n{result.stderr[-2000:]}")
    probe = re.search(r'<script[^>]*id="browser-check-report"[^>]*>(.*?)</script>',
                      result.stdout, flags=re.S)
    report = json.loads(probe.group(1)) if probe else None
    return RenderedPage(name=name, built_html=built_html, dom=result.stdout, report=report)


def render_all(chromium: str, site_dir: Path, names: list[str],
               screenshots: dict[str, Path] | None = None,
               workers: int = 2) -> dict[str, RenderedPage]:
    """:func:`render` every page, ``workers`` browsers at a time; ``screenshots`` maps a page
    to the PNG file to save it as."""
    screenshots = screenshots or {}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pages = pool.map(lambda name: render(chromium, site_dir, name, screenshots.get(name)),
                         names)
        return {page.name: page for page in pages}


def screenshot_targets(names: list[str], site_dir: Path,
                       folder: Path = SCREENSHOT_DIR) -> dict[str, Path]:
    """Where to save screenshots: of the root page, and of the chapter richest in formulas and
    images (the one most likely to show a rendering fault)."""
    chapters = [name for name in names[1:] if name.startswith("chapters/")] or names[1:]

    def richness(name: str) -> int:
        html = (site_dir / name).read_text(encoding="utf-8")
        return html.count('class="math') + html.count("<img")

    chosen = names[:1] + ([max(chapters, key=richness)] if chapters else [])
    return {name: folder / f"{Path(name).stem}.png" for name in chosen}


def _classes(tag) -> list[str]:
    return tag.get("class") or []


def _prose_text(soup: BeautifulSoup) -> str:
    """The text a reader sees outside code blocks and typeset formulas."""
    main = soup.find("main") or soup.body or soup
    return " ".join(
        text for text in main.find_all(string=True)
        if not any(parent.name in _NOT_PROSE for parent in text.parents)
    )


def math_problems(page: RenderedPage) -> list[str]:
    """Formulas that MathJax left untypeset, or typeset as an error."""
    problems = []
    built_math = len(re.findall(r'class="math[ "]', page.built_html))
    soup = page.soup
    if built_math:
        status = (page.report or {}).get("mathjax", "no report: the page's scripts never finished")
        if status != "typeset":
            problems.append(f"{page.name}: MathJax did not typeset the page ({status})")
        if soup.find("mjx-container") is None:
            problems.append(f"{page.name}: {built_math} formulas but no <mjx-container>")
    for element in soup.select(".math"):
        if element.find("mjx-container") is None:
            problems.append(f"{page.name}: formula not typeset: {element.get_text()[:80]!r}")
    for error in soup.find_all("mjx-merror"):
        message = error.get("data-mjx-error") or error.get_text()
        problems.append(f"{page.name}: MathJax error: {message[:120]!r}")
    for match in _RAW_TEX.finditer(_prose_text(soup)):
        context = match.string[max(0, match.start() - 40):match.end() + 40]
        problems.append(f"{page.name}: raw TeX in the text: {' '.join(context.split())!r}")
    return problems


def image_problems(page: RenderedPage, site_dir: Path) -> list[str]:
    """Images that would not show offline: loaded from the web (the site ships every image it
    shows, the Colab badge included), missing from the build, or not decodable."""
    if page.report is None:
        return [f"{page.name}: the page never finished loading, its images are unchecked"]
    problems = []
    folder = (site_dir / page.name).parent
    for image in page.report["images"]:
        src = image["src"] or ""
        if src.startswith("//") or (_URL_SCHEME.match(src)
                                    and not src.startswith(("data:", "file:"))):
            problems.append(f"{page.name}: <img src={src!r}> loads from the web")
            continue
        if not src.startswith("data:"):
            target = folder / unquote(urlsplit(src).path)
            if not target.is_file():
                problems.append(f"{page.name}: <img src={src!r}> is not in the build")
                continue
        if not image["complete"] or image["naturalWidth"] == 0:
            problems.append(f"{page.name}: <img src={src!r}> did not load in the browser")
    return problems


def code_width_problems(page: RenderedPage) -> list[str]:
    """Code cells wider than the page's code column, in a 1280-pixel-wide window."""
    if page.report is None:
        return [f"{page.name}: the page never finished loading, its code is unchecked"]
    return [f"{page.name}: a code cell is {block['scrollWidth']} px wide in a "
            f"{block['clientWidth']} px column; it starts {block['line']!r}"
            for block in page.report.get("wide_code", [])]


def output_problems(page: RenderedPage) -> list[str]:
    """Output cells that show an error: tracebacks, or stderr with an error in it."""
    problems = []
    for output in page.soup.select(".cell_output .output, .output_area, .traceback"):
        classes = _classes(output)
        text = output.get_text()
        if ("traceback" in classes or "error" in classes
                or "Traceback (most recent call last)" in text
                or ("stderr" in classes and re.search(r"Traceback|Error", text))):
            first = next((line for line in text.splitlines() if line.strip()), "")
            problems.append(f"{page.name}: error output cell: {first.strip()[:120]!r}")
    return problems


def _ids(html_file: Path, cache: dict[Path, set[str]]) -> set[str]:
    if html_file not in cache:
        text = html_file.read_text(encoding="utf-8", errors="replace")
        cache[html_file] = set(re.findall(r'\s(?:id|name)="([^"]*)"', text))
    return cache[html_file]


def link_problems(site_dir: Path = SITE_DIR) -> list[str]:
    """Relative ``href``/``src`` values, in every built page, that lead nowhere.

    A link must name an existing file of the build; when it also names an anchor in an HTML
    page (``page.html#section``), that page must have an element with that ``id``.
    """
    problems: list[str] = []
    id_cache: dict[Path, set[str]] = {}
    for page in sorted(site_dir.rglob("*.html")):
        if "_static" in page.relative_to(site_dir).parts:
            continue  # the theme's vendored assets, not pages of the book
        soup = BeautifulSoup(page.read_text(encoding="utf-8"), "html.parser")
        name = page.relative_to(site_dir).as_posix()
        for tag in soup.find_all(["a", "link", "img", "script", "source", "iframe"]):
            for attribute in ("href", "src"):
                url = tag.get(attribute)
                if not url or url.startswith("//") or _URL_SCHEME.match(url):
                    continue
                parts = urlsplit(url)
                target = (page.parent / unquote(parts.path)).resolve() if parts.path else page
                if target.is_dir():
                    target = target / "index.html"
                if not target.is_file():
                    problems.append(f"{name}: {attribute}={url!r} points to a missing file")
                elif parts.fragment and target.suffix == ".html":
                    if unquote(parts.fragment) not in _ids(target, id_cache):
                        problems.append(f"{name}: {attribute}={url!r}: no such anchor")
    return problems


def main(argv: list[str]) -> int:
    site_dir = Path(argv[1]) if len(argv) > 1 else SITE_DIR
    if not (site_dir / "index.html").exists():
        print(f"no built site at {site_dir}: run `make site` first", file=sys.stderr)
        return 2
    problems = link_problems(site_dir)
    chromium = find_chromium()
    if chromium is None:
        print("chromium not found (apt-get install chromium): only the links were checked")
    else:
        names = [name for name in toc_pages(site_dir) if (site_dir / name).exists()]
        problems += [f"{name}: not built" for name in toc_pages(site_dir) if name not in names]
        screenshots = screenshot_targets(names, site_dir)
        for page in render_all(chromium, site_dir, names, screenshots).values():
            problems += math_problems(page) + image_problems(page, site_dir)
            problems += output_problems(page) + code_width_problems(page)
        for path in screenshots.values():
            print(f"screenshot: {path}")
    for problem in problems:
        print(problem)
    print(f"{len(problems)} problem(s) in {site_dir}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
