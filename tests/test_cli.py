"""Tests of ``python -m utils shapes``, run the way a reader runs it: as a separate process."""
from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_cli(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "utils", *arguments],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
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
