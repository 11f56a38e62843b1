"""One setting for the book's repository address (``book/_config.yml``), and every badge, Setup
cell, link and ``utils.REPO_URL`` derived from it (``book/repository.py``)."""
from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "book"))

import repository  # noqa: E402

import utils  # noqa: E402


def test_every_badge_setup_cell_and_link_names_the_configured_repository():
    problems = repository.disagreements()
    assert not problems, ("these places disagree with book/_config.yml's repository url; run "
                          "`make repository URL=...` rather than editing them:\n"
                          + "\n".join(problems))
    assert utils.REPO_URL == repository.configured_url()


def test_the_readme_says_where_to_set_the_address():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "make repository URL=" in readme and "book/_config.yml" in readme


@pytest.fixture
def book_copy(tmp_path, monkeypatch):
    """The files that name the repository, copied into a scratch tree the module works on."""
    for path in [repository.CONFIG, *repository.derived_files()]:
        target = tmp_path / path.relative_to(ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    monkeypatch.setattr(repository, "ROOT", tmp_path)
    monkeypatch.setattr(repository, "CONFIG", tmp_path / "book" / "_config.yml")
    return tmp_path


def test_moving_the_book_rewrites_every_place_and_nothing_else(book_copy):
    old = repository.configured_url()
    changed = repository.set_url("https://github.com/someone/captions")
    assert repository.configured_url() == "https://github.com/someone/captions"
    assert repository.disagreements() == []
    names = {path.name for path in changed}
    assert {"_config.yml", "README.md", "intro.md", "__init__.py",
            "01_background.md", "01_background.ipynb"} <= names
    chapter = (book_copy / "chapters" / "05_implementation.md").read_text(encoding="utf-8")
    assert "colab.research.google.com/github/someone/captions/blob/main/chapters/" in chapter
    assert re.search(r'BOOK_REPOSITORY = \(?\s*"https://github\.com/someone/captions"', chapter)
    assert old.removeprefix("https://github.com/") not in chapter
    for copy in repository.derived_files():  # the datasets' repositories are not moved
        original = (ROOT / copy.relative_to(book_copy)).read_text(encoding="utf-8")
        for other in repository.OTHER_REPOSITORIES:
            assert copy.read_text(encoding="utf-8").count(other) == original.count(other)


def test_a_place_edited_alone_is_named(book_copy):
    intro = book_copy / "book" / "intro.md"
    intro.write_text(intro.read_text(encoding="utf-8")
                     + "\nSee <https://github.com/elsewhere/fork>.\n", encoding="utf-8")
    problems = repository.disagreements()
    assert len(problems) == 1 and problems[0].startswith("book/intro.md:")
    assert "elsewhere/fork" in problems[0]


def test_an_address_that_is_not_a_repository_is_refused(book_copy):
    with pytest.raises(SystemExit, match="not a GitHub repository address"):
        repository.set_url("https://gitlab.com/someone/captions")
