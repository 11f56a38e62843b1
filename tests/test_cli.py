"""Tests of ``python -m utils shapes|train|evaluate|caption``, run the way a reader runs them: as
separate processes."""
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

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_cli(*arguments: str, env: dict | None = None) -> subprocess.CompletedProcess:
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


def assert_failed_cleanly(result: subprocess.CompletedProcess) -> None:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert "Traceback" not in result.stderr


def leftovers(folder: pathlib.Path) -> list[str]:
    """Hidden staging folders or dataset files anywhere under ``folder``."""
    return [str(p) for p in folder.rglob("*") if p.name.startswith(".") or p.name.endswith(".json")]


def test_writes_a_dataset_and_reuses_it(tmp_path):
    out = tmp_path / "shapes"
    first = run_cli(*shapes_args(out))
    assert first.returncode == 0, first.stderr
    summary = first.stdout.strip().splitlines()
    assert len(summary) == 1
    assert "train 9, val 1, test 1, test_novel 1" in summary[0] and str(out) in summary[0]
    assert len(list((out / "images").glob("*.png"))) == 12
    assert json.loads((out / "dataset_shapes.json").read_text())["seed"] == 0

    again = run_cli(*shapes_args(out))
    assert again.returncode == 0 and "reusing" in again.stdout


def test_overwrite_replaces_a_different_dataset(tmp_path):
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
def test_bad_options_fail_with_one_error_line(tmp_path, num_images, seed, extra):
    out = tmp_path / "shapes"
    assert_failed_cleanly(run_cli(*shapes_args(out, num_images, seed, *extra)))
    assert not out.exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize("arguments", [[], ["pictures"], ["shapes"]])
def test_missing_or_unknown_commands_fail_with_one_error_line(arguments):
    assert_failed_cleanly(run_cli(*arguments))


def test_train_refuses_an_unknown_decoder(tmp_path):
    result = run_cli("train", "--profile", "smoke", "--decoder", "pointer", "--out",
                     str(tmp_path / "run"))
    assert_failed_cleanly(result)
    assert "show_and_tell" in result.stderr and not (tmp_path / "run").exists()


def test_an_unwritable_folder_fails_with_one_error_line(tmp_path):
    # A file where a folder should be defeats even root, unlike file permissions.
    (tmp_path / "blocker").write_text("")
    result = run_cli(*shapes_args(tmp_path / "blocker" / "shapes"))
    assert_failed_cleanly(result)
    assert leftovers(tmp_path) == []


def test_an_existing_different_dataset_is_refused_and_kept(tmp_path):
    out = tmp_path / "shapes"
    assert run_cli(*shapes_args(out, seed="1")).returncode == 0
    result = run_cli(*shapes_args(out, seed="2"))
    assert_failed_cleanly(result)
    assert "--overwrite" in result.stderr
    assert json.loads((out / "dataset_shapes.json").read_text())["seed"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shapes"]


def test_a_folder_of_other_files_is_never_overwritten(tmp_path):
    out = tmp_path / "notes"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    assert_failed_cleanly(run_cli(*shapes_args(out), "--overwrite"))
    assert [p.name for p in out.iterdir()] == ["thesis.tex"]


# --- train / evaluate / caption (one smoke-profile run shared by the tests below) -------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run trained by `train` on the smoke profile (12 steps), its data under BOOK_DATA=tmp."""
    root = tmp_path_factory.mktemp("cli-run")
    env = {"BOOK_DATA": str(root / "data"), "BOOK_PROFILE": "smoke"}
    run = root / "runs" / "smoke"
    command = ["train", "--dataset", "shapes", "--profile", "smoke", "--out", run, "--seed", "0",
               "--no-jit"]  # XLA would take longer to compile than these 12 steps take to run
    result = run_cli(*command, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"captioner exported to {run / 'captioner'}" in result.stdout
    assert sorted(p.name for p in (run / "captioner").iterdir()) == [
        "export.json", "model.keras", "vocabulary.json"]
    assert list((root / "data").glob("shapes-240-64px-seed0/dataset_*.json"))
    return run, env, command


def test_train_again_continues_instead_of_starting_over(trained):
    run, env, command = trained
    again = run_cli(*command, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "holds a finished run" in again.stdout and "Epoch" not in again.stdout


def test_evaluate_and_caption(trained, tmp_path):
    run, env, _ = trained
    # evaluate on the split of another Karpathy-layout folder, written by `shapes`
    data = tmp_path / "other"
    assert run_cli(*shapes_args(data, "16", "5")).returncode == 0
    result = run_cli("evaluate", "--run", run, "--split", "test", "--data", data,
                     "--beam-size", "2", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    [scores_path] = run.glob("scores-other-*-test-beam2.json")  # named after the data too
    scores = json.loads(scores_path.read_text())
    assert {"Bleu_4", "CIDEr", "ROUGE_L", "exact", "correct", "complete"} <= set(scores)
    assert scores["images"] == 2 and scores["split"] == "test" and 0 <= scores["exact"] <= 1
    assert "Bleu_4" in result.stdout and str(scores_path) in result.stdout

    # two new images of other sizes, PNG and JPEG, with attention figures
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.full((50, 40, 3), 200, np.uint8)).save(tmp_path / "b.jpg")
    figures = tmp_path / "attention"
    result = run_cli("caption", "--model", run, tmp_path / "a.png", tmp_path / "b.jpg",
                     "--attention-out", figures, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith(f"{tmp_path / 'a.png'}: ") and lines[1].startswith(
        f"{tmp_path / 'b.jpg'}: ")
    assert sorted(p.name for p in figures.iterdir()) == ["a.attention.png", "b.attention.png"]
    assert Image.open(figures / "a.attention.png").format == "PNG"


def test_bad_input_fails_with_one_error_line(trained, tmp_path):
    run, env, command = trained
    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(good)
    (tmp_path / "page.png").write_text("<html>404</html>")
    mismatched = tmp_path / "mismatched"
    shutil.copytree(run / "captioner", mismatched)
    vocabulary = json.loads((mismatched / "vocabulary.json").read_text())
    vocabulary["words"] = vocabulary["words"][:-1]
    (mismatched / "vocabulary.json").write_text(json.dumps(vocabulary))
    other_seed = [*command[:-2], "1", "--no-jit"]
    cases = [
        (["evaluate", "--run", tmp_path / "no-run", "--split", "test"], "no captioner export"),
        (["evaluate", "--run", run, "--split", "tset"], "unknown split 'tset'"),
        (["caption", "--model", run, good, tmp_path / "page.png"], "page.png"),
        (["caption", "--model", mismatched, good], "vocabulary.json does not match"),
        (["train", "--dataset", "flickr8k", "--out", tmp_path / "f"], "only the shapes dataset"),
        (other_seed, "seed 0"),
    ]
    for arguments, message in cases:
        result = run_cli(*arguments, env=env)
        assert_failed_cleanly(result)
        assert message in result.stderr, (arguments, result.stderr)
    assert not (tmp_path / "f").exists()
