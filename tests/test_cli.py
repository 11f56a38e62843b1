"""Tests of ``python -m utils shapes|train|evaluate|caption``.

Most run the commands in-process through ``utils.__main__.main`` (the ``run_cli`` fixture):
the same parser, commands and messages, without starting Python and TensorFlow for every call.
Two run real processes (``run_process``), to prove that the module works as a program: one
``shapes`` and one ``caption``. The trained model is the session's ``smoke_run`` (conftest.py).
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from utils import evaluation, metrics, shapes

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_process(*arguments: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m utils *arguments`` as a separate process."""
    return subprocess.run(
        [sys.executable, "-m", "utils", *map(str, arguments)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=None if env is None else {**os.environ, **env},
    )


def shapes_args(out: pathlib.Path, num_images: str = "12", seed: str = "0", *extra: str) -> list:
    return ["shapes", "--out", str(out), "--num-images", num_images, "--seed", seed, *extra]


def assert_failed_cleanly(result) -> None:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert "Traceback" not in result.stderr


def leftovers(folder: pathlib.Path) -> list[str]:
    """Hidden staging folders or dataset files anywhere under ``folder``."""
    return [str(p) for p in folder.rglob("*") if p.name.startswith(".") or p.name.endswith(".json")]


def test_writes_a_dataset_and_reuses_it_as_a_process(tmp_path):
    out = tmp_path / "shapes"
    first = run_process(*shapes_args(out))
    assert first.returncode == 0, first.stderr
    summary = first.stdout.strip().splitlines()
    assert len(summary) == 1
    assert "train 9, val 1, test 1, test_novel 1" in summary[0] and str(out) in summary[0]
    assert len(list((out / "images").glob("*.png"))) == 12
    assert json.loads((out / "dataset_shapes.json").read_text())["seed"] == 0

    again = run_process(*shapes_args(out))
    assert again.returncode == 0 and "reusing" in again.stdout


def test_in_process_shapes_writes_the_same_files_as_the_library(tmp_path, run_cli):
    result = run_cli(*shapes_args(tmp_path / "cli", "12", "4"))
    assert result.returncode == 0, result.stderr
    library = shapes.write_dataset(tmp_path / "library", 12, seed=4).parent
    for name in ("dataset_shapes.json", "images/shapes_000011.png"):
        assert (tmp_path / "cli" / name).read_bytes() == (library / name).read_bytes()


def test_overwrite_replaces_a_different_dataset(tmp_path, run_cli):
    out = tmp_path / "shapes"
    assert run_cli(*shapes_args(out, seed="1")).returncode == 0
    result = run_cli(*shapes_args(out, seed="2"), "--overwrite")
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "dataset_shapes.json").read_text())["seed"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shapes"]


@pytest.mark.parametrize(
    "num_images, seed, extra",
    [
        ("0", "0", []),
        ("-5", "0", []),
        ("ten", "0", []),
        ("12", "-1", []),
        ("12", "0", ["--image-size", "16"]),
        ("12", "0", ["--bogus"]),
    ],
)
def test_bad_options_fail_with_one_error_line(tmp_path, run_cli, num_images, seed, extra):
    out = tmp_path / "shapes"
    assert_failed_cleanly(run_cli(*shapes_args(out, num_images, seed, *extra)))
    assert not out.exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize("arguments", [[], ["pictures"], ["shapes"]])
def test_missing_or_unknown_commands_fail_with_one_error_line(run_cli, arguments):
    result = run_cli(*arguments)
    assert_failed_cleanly(result)
    assert result.returncode == 2  # usage errors, as argparse reports them


def test_train_refuses_an_unknown_decoder(tmp_path, run_cli):
    result = run_cli("train", "--profile", "smoke", "--decoder", "pointer", "--run",
                     str(tmp_path / "run"))
    assert_failed_cleanly(result)
    assert "show_and_tell" in result.stderr and not (tmp_path / "run").exists()


def test_an_unwritable_folder_fails_with_one_error_line(tmp_path, run_cli):
    # A file where a folder should be defeats even root, unlike file permissions.
    (tmp_path / "blocker").write_text("")
    result = run_cli(*shapes_args(tmp_path / "blocker" / "shapes"))
    assert_failed_cleanly(result)
    assert result.returncode == 1
    assert leftovers(tmp_path) == []


def test_an_existing_different_dataset_is_refused_and_kept(tmp_path, run_cli):
    out = tmp_path / "shapes"
    assert run_cli(*shapes_args(out, seed="1")).returncode == 0
    result = run_cli(*shapes_args(out, seed="2"))
    assert_failed_cleanly(result)
    assert "--overwrite" in result.stderr
    assert json.loads((out / "dataset_shapes.json").read_text())["seed"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shapes"]


def test_a_folder_of_other_files_is_never_overwritten(tmp_path, run_cli):
    out = tmp_path / "notes"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    assert_failed_cleanly(run_cli(*shapes_args(out), "--overwrite"))
    assert [p.name for p in out.iterdir()] == ["thesis.tex"]


# --- train / evaluate / caption, on the session's smoke run ------------------------------------


@pytest.fixture
def run_copy(smoke_run, tmp_path) -> pathlib.Path:
    """A copy of the shared smoke run, for the commands that write into their run folder."""
    return pathlib.Path(shutil.copytree(smoke_run.out, tmp_path / "run"))


def test_train_exports_the_captioner(smoke_run):
    assert f"captioner exported to {smoke_run.export}" in smoke_run.output
    assert sorted(p.name for p in smoke_run.export.iterdir()) == [
        "export.json", "model.keras", "vocabulary.json"]
    assert list(smoke_run.data.glob("shapes-240-64px-seed0/dataset_*.json"))


def test_train_again_continues_instead_of_starting_over(smoke_run, run_copy, run_cli):
    from utils import export

    arguments = [*smoke_run.arguments]
    arguments[arguments.index("--run") + 1] = str(run_copy)
    again = run_cli(*arguments, env=smoke_run.env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "holds a finished run" in again.stdout and "Epoch" not in again.stdout
    # exported again: the same settings and vocabulary, a new file with the same weights
    again, first = (json.loads((folder / "export.json").read_text())
                    for folder in (run_copy / "captioner", smoke_run.export))
    for moved in ("saved_at", "model_sha256"):
        again.pop(moved), first.pop(moved)
    assert again == first
    reloaded, original = (export.load_captioner(folder).model
                          for folder in (run_copy / "captioner", smoke_run.export))
    for ours, theirs in zip(reloaded.get_weights(), original.get_weights(), strict=True):
        np.testing.assert_array_equal(ours, theirs)


def fixed_meteor(candidates, references):
    """A stand-in for the METEOR jar: the evaluate command's plumbing, not METEOR, is tested."""
    return 0.25, [0.25] * len(candidates)


def test_evaluate_scores_the_captions_of_the_split(smoke_run, run_copy, run_cli, tmp_path,
                                                   monkeypatch):
    from utils import export

    # the test split of another Karpathy-layout folder, written by `shapes`
    data = tmp_path / "other"
    assert run_cli(*shapes_args(data, "16", "5")).returncode == 0
    monkeypatch.setattr(metrics, "meteor", fixed_meteor)
    result = run_cli("evaluate", "--run", run_copy, "--split", "test", "--data", data,
                     "--beam-size", "2", env=smoke_run.env)
    assert result.returncode == 0, result.stderr[-3000:]
    [written] = run_copy.glob("scores-other-*-test-beam2.json")  # named after the data too
    scores = json.loads(written.read_text())
    assert "Bleu_4" in result.stdout and str(written) in result.stdout

    # the same captions and scores, computed here from the image files and the stored scenes
    images = [image for image in json.loads((data / "dataset_shapes.json").read_text())["images"]
              if image["split"] == "test"]
    files = [data / image["filepath"] / image["filename"] for image in images]
    captions = [text for text, _ in export.caption(run_copy, files, beam_size=2)]
    references = {i: [s["raw"] for s in image["sentences"]] for i, image in enumerate(images)}
    expected = metrics.evaluate_captions(references, dict(enumerate(captions)))
    verdicts = [shapes.check_caption(c, image["scene"]) for c, image in zip(captions, images)]
    expected["exact"] = float(np.mean([v.exact for v in verdicts]))
    expected["correct"] = float(np.mean([v.correct for v in verdicts]))
    expected["complete"] = float(np.mean([v.complete for v in verdicts]))
    assert {key: scores[key] for key in expected} == pytest.approx(expected, abs=1e-12)
    assert scores["METEOR"] == 0.25
    assert (scores["images"], scores["split"], scores["beam_size"]) == (len(images), "test", 2)
    # how often the captions state a relation, beside the references (nan where none is stated)
    informative = evaluation.informativeness(captions, [image["scene"] for image in images],
                                             list(references.values()))
    assert json.dumps(scores["informativeness"]) == json.dumps(informative)
    assert "relations stated" in result.stdout.splitlines()[-2]


def write_two_images(folder: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """A 120x90 PNG of noise and a flat 40x50 JPEG: sizes other than the model's 64x64."""
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)).save(folder / "a.png")
    Image.fromarray(np.full((50, 40, 3), 200, np.uint8)).save(folder / "b.jpg")
    return folder / "a.png", folder / "b.jpg"


@pytest.mark.slow
def test_caption_as_a_process_prints_captions_and_saves_attention(smoke_run, tmp_path):
    from utils import export

    first, second = write_two_images(tmp_path)
    figures = tmp_path / "attention"
    result = run_process("caption", "--run", smoke_run.out, first, second,
                         "--attention-out", figures, env=smoke_run.env)
    assert result.returncode == 0, result.stderr[-3000:]
    expected = [text or "(no words)" for text, _ in export.caption(smoke_run.out, [first, second])]
    assert result.stdout.strip().splitlines() == [
        f"{first}: {expected[0]}", f"{second}: {expected[1]}",
        f"attention figures: 2 in {figures}"]
    assert sorted(p.name for p in figures.iterdir()) == ["a.attention.png", "b.attention.png"]
    assert Image.open(figures / "a.attention.png").format == "PNG"


def test_bad_input_fails_with_one_error_line(smoke_run, tmp_path, run_cli):
    run = smoke_run.out
    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(good)
    (tmp_path / "page.png").write_text("<html>404</html>")
    mismatched = tmp_path / "mismatched"
    shutil.copytree(smoke_run.export, mismatched)
    vocabulary = json.loads((mismatched / "vocabulary.json").read_text())
    vocabulary["words"] = vocabulary["words"][:-1]
    (mismatched / "vocabulary.json").write_text(json.dumps(vocabulary))
    other_seed = [*smoke_run.arguments[:-1], "1"]
    cases = [
        (["evaluate", "--run", tmp_path / "no-run", "--split", "test"], "no captioner export"),
        (["evaluate", "--run", run, "--split", "tset"], "unknown split 'tset'"),
        (["caption", "--run", run, good, tmp_path / "page.png"], "page.png"),
        (["caption", "--run", mismatched, good], "vocabulary.json does not match"),
        (["train", "--dataset", "flickr8k", "--run", tmp_path / "f"], "only the shapes dataset"),
        (other_seed, "seed 0"),
    ]
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    for arguments, message in cases:
        result = run_cli(*arguments, env=smoke_run.env)
        assert_failed_cleanly(result)
        assert result.returncode == 1
        assert message in result.stderr, (arguments, result.stderr)
    assert not (tmp_path / "f").exists()
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before  # nothing written
