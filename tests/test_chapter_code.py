"""The chapters build the captioner in the open, and ``utils/`` holds the very same code.

A chapter cell that starts with ``# @save utils/NAME.py`` is copied into that module by
``make code`` (``book/chapter_code.py``). These tests fail, naming both places, when the two
differ; and they run chapter 5's cells on their own, as a reader copying them into an empty
notebook would, to show that they train the captioner without the model code of ``utils/``.
"""
from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "book"))
import chapter_code  # noqa: E402

MODEL_MODULES = ("utils/encoders.py", "utils/attention.py", "utils/decoders.py",
                 "utils/captioner.py", "utils/losses.py", "utils/backbones.py")


def test_every_saved_cell_is_in_its_module_word_for_word():
    problems = chapter_code.check()
    assert not problems, "\n".join(problems)


def test_the_model_modules_are_built_in_the_chapters():
    cells = chapter_code.saved_cells()
    saved = {cell.module for cell in cells}
    assert set(MODEL_MODULES) <= saved, set(MODEL_MODULES) - saved
    where = {(cell.module, cell.notebook) for cell in cells}
    assert ("utils/losses.py", "chapters/03_algorithms.ipynb") in where
    assert ("utils/captioner.py", "chapters/05_implementation.ipynb") in where


@pytest.fixture
def book_copy(tmp_path):
    """The chapters and utils/ in a scratch folder, to change one side."""
    shutil.copytree(ROOT / "chapters", tmp_path / "chapters",
                    ignore=shutil.ignore_patterns("figures", ".ipynb_checkpoints"))
    shutil.copytree(ROOT / "utils", tmp_path / "utils",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def _edit_saved_cell(notebook: pathlib.Path, old: str, new: str) -> None:
    book = json.loads(notebook.read_text("utf-8"))
    for cell in book["cells"]:
        source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        if re.match(r"#\s*@save", source) and old in source:
            cell["source"] = source.replace(old, new, 1)
            notebook.write_text(json.dumps(book), "utf-8")
            return
    raise AssertionError(f"no # @save cell of {notebook.name} holds {old!r}")


def test_a_changed_chapter_cell_fails_naming_the_cell_and_the_module(book_copy):
    line = "        self.project = layers.Dense(dim)\n"
    _edit_saved_cell(book_copy / "chapters" / "05_implementation.ipynb", line,
                     line.replace("Dense(dim)", "Dense(dim, use_bias=False)"))
    problems = chapter_code.check(book_copy)
    assert len(problems) == 1, problems
    assert "chapters/05_implementation.md line" in problems[0]
    assert "(5.4 The encoder)" in problems[0] and "utils/encoders.py lines" in problems[0]
    assert "use_bias=False" in problems[0]


def test_a_changed_module_fails_naming_the_cell_and_the_module(book_copy):
    module = book_copy / "utils" / "losses.py"
    module.write_text(module.read_text().replace("ops.maximum(ops.sum(mask), 1.0)",
                                                 "ops.sum(mask)"))
    problems = chapter_code.check(book_copy)
    assert len(problems) == 1, problems
    assert "chapters/03_algorithms.md line" in problems[0]
    assert "utils/losses.py lines" in problems[0]


def test_make_code_copies_the_chapter_into_the_module(book_copy):
    _edit_saved_cell(book_copy / "chapters" / "03_algorithms.ipynb", "ops.maximum(ops.sum(mask), 1.0)",
                     "ops.maximum(ops.sum(mask), 2.0)")
    assert chapter_code.check(book_copy)
    assert chapter_code.write(book_copy) == ["utils/losses.py"]
    assert chapter_code.check(book_copy) == []
    assert "ops.maximum(ops.sum(mask), 2.0)" in (book_copy / "utils" / "losses.py").read_text()


def test_a_block_without_its_cell_is_reported(book_copy):
    module = book_copy / "utils" / "attention.py"
    module.write_text(module.read_text() + "\n\n# >>> chapters/05_implementation.ipynb, section 9.9:"
                      " edit it there, then `make code`\nX = 1\n# <<< chapters/05_implementation"
                      ".ipynb\n")
    problems = chapter_code.check(book_copy)
    assert any("no # @save cell of the chapters stands for it" in p for p in problems), problems


# --- chapter 5's cells, on their own ----------------------------------------------------------

#: Runs after the copied cells: the captioner they trained is theirs, and it is utils' captioner.
CHECKS = textwrap.dedent("""
    import sys as _sys
    for _part in (plain, plain.encoder, plain.decoder, plain.decoder.attention):
        assert type(_part).__module__ == "__main__", type(_part)
    _imported = [name for name in ("utils.model", "utils.captioner", "utils.encoders",
                                   "utils.attention", "utils.decoders", "utils.backbones")
                 if name in _sys.modules]
    assert not _imported, f"the cells imported model code from utils: {_imported}"

    import utils.captioner as _library
    keras.utils.set_random_seed(42)
    _twin = _library.Captioner(
        _library.RegionEncoder(PROFILE.cnn_filters, dim=PROFILE.cnn_filters[-1]),
        _library.AttentionDecoder(len(vocabulary), PROFILE.embed_dim, PROFILE.units,
                                  PROFILE.attention_units, PROFILE.dropout))
    _twin((batch_images[:1], batch_captions[:1, :-1]))
    _twin.compile(optimizer=keras.optimizers.Adam(PROFILE.learning_rate, clipnorm=5.0))
    _twin.fit(train.training_pipeline(splits["train"], PROFILE.batch_size),
              steps_per_epoch=steps, epochs=1, verbose=0)
    for _mine, _theirs in zip(plain.get_weights(), _twin.get_weights(), strict=True):
        np.testing.assert_allclose(_mine, _theirs, rtol=1e-5, atol=1e-6)
    print("CELLS TRAINED THE SAME CAPTIONER")
""")


def chapter_five_cells_until(heading: str) -> str:
    """The code cells of chapter 5 before the markdown cell holding ``heading``, as a script."""
    book = json.loads((ROOT / "chapters" / "05_implementation.ipynb").read_text("utf-8"))
    code = []
    for cell in book["cells"]:
        source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        if cell["cell_type"] == "markdown" and heading in source:
            return "\n\n".join(code)
        if cell["cell_type"] == "code":
            code.append(source)
    raise AssertionError(f"chapter 5 has no heading {heading!r}")


def test_chapter_five_cells_alone_train_the_captioner_of_utils(tmp_path):
    """Copy every code cell of chapter 5 up to "Making it fast" into an empty script, run it in
    the smoke profile, then check that the plain model it trained came from its own cells and
    equals the one ``utils.captioner`` trains from the same seed."""
    script = tmp_path / "chapter5_cells.py"
    script.write_text(chapter_five_cells_until("## 5.10 Making it fast") + "\n\n" + CHECKS)
    env = {**os.environ, "BOOK_PROFILE": "smoke", "MPLBACKEND": "Agg",
           "BOOK_DATA": os.environ.get("BOOK_DATA", str(ROOT / "data")),
           "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert "CELLS TRAINED THE SAME CAPTIONER" in result.stdout
