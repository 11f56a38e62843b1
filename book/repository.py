"""The book's repository address: one setting, and every place that derives from it.

The address is kept in ``book/_config.yml`` (``repository: url:``). The Colab badge of each
chapter, the ``BOOK_REPOSITORY`` line of each Setup cell, the clone command and links of the
introduction and the README, and ``utils.REPO_URL`` all name the same repository.

    python book/repository.py --check                     # name every place that disagrees
    python book/repository.py --set https://github.com/OWNER/NAME   # move the book (make repository)

Until the book is published, the setting holds a placeholder (see the README, "Publishing").
"""
from __future__ import annotations

import argparse
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = ROOT / "book" / "_config.yml"

#: Repositories the book links to that are not its own (datasets it reads), and the template
#: that the README's instructions write.
OTHER_REPOSITORIES = frozenset({"jbrownlee/Datasets", "tensorflow/datasets", "OWNER/NAME"})

#: ``github.com/OWNER/NAME`` and Colab's ``colab.research.google.com/github/OWNER/NAME``.
ADDRESS = re.compile(
    r"(?:https://github\.com/|colab\.research\.google\.com/github/)"
    r"(?P<repository>[A-Za-z0-9_.-]+/[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*?)(?:\.git)?(?=[/)\"'>\s]|$)"
)
URL = re.compile(r"https://github\.com/[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+")


def derived_files() -> list[pathlib.Path]:
    """Every file that names the repository: derived from the setting, never edited alone."""
    chapters = sorted((ROOT / "chapters").glob("[0-9][0-9]_*.md"))
    notebooks = sorted((ROOT / "chapters").glob("[0-9][0-9]_*.ipynb"))
    return [ROOT / "README.md", ROOT / "book" / "intro.md", ROOT / "utils" / "__init__.py",
            *chapters, *notebooks]


def configured_url(config: pathlib.Path | None = None) -> str:
    """The ``repository: url:`` of ``book/_config.yml``, checked to be a GitHub address."""
    config = config or CONFIG
    found = re.search(r"^repository:\s*\n\s+url:\s*(\S+)\s*$", config.read_text(encoding="utf-8"),
                      re.MULTILINE)
    if not found or not URL.fullmatch(found[1]):
        raise SystemExit(f"{config}: `repository: url:` must be https://github.com/OWNER/NAME")
    return found[1]


def disagreements(url: str | None = None) -> list[str]:
    """``file:line: address`` for every repository address that is neither the configured one
    nor one of :data:`OTHER_REPOSITORIES`."""
    expected = (url or configured_url()).removeprefix("https://github.com/")
    found = []
    for path in derived_files():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for match in ADDRESS.finditer(line):
                repository = match["repository"]
                if repository != expected and repository not in OTHER_REPOSITORIES:
                    found.append(f"{path.relative_to(ROOT)}:{number}: {repository} "
                                 f"(book/_config.yml says {expected})")
    return found


def set_url(new_url: str) -> list[pathlib.Path]:
    """Move the book to ``new_url``: the setting first, then every derived place. Returns the
    files changed."""
    if not URL.fullmatch(new_url):
        raise SystemExit(f"not a GitHub repository address: {new_url!r} "
                         f"(expected https://github.com/OWNER/NAME)")
    old = configured_url().removeprefix("https://github.com/")
    new = new_url.removeprefix("https://github.com/")
    changed = []
    for path in [CONFIG, *derived_files()]:
        text = path.read_text(encoding="utf-8")
        moved = re.sub(rf"(https://github\.com/|colab\.research\.google\.com/github/){re.escape(old)}"
                       rf"(?=[/)\"'>\s]|$)", rf"\g<1>{new}", text, flags=re.MULTILINE)
        if moved != text:
            path.write_text(moved, encoding="utf-8")
            changed.append(path)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--check", action="store_true", help="name every place that disagrees")
    action.add_argument("--set", metavar="URL", help="move every place to this address")
    args = parser.parse_args(argv)
    if args.set:
        for path in set_url(args.set):
            print(f"rewrote {path.relative_to(ROOT)}")
    problems = disagreements()
    for problem in problems:
        print(problem, file=sys.stderr)
    if not problems:
        print(f"every badge, Setup cell and link names {configured_url()}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
