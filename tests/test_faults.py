"""The faults found by feeding ``python -m utils`` bad input (issue 14), one or more tests each.

The commands run in-process through ``utils.__main__.main`` so that no test pays for starting
TensorFlow again; the only subprocess is the ``shapes`` run that is killed with SIGKILL.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import pathlib
import re
import shutil
import stat
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest
from PIL import Image

from utils import shapes
from utils.__main__ import main

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_main(capsys, *arguments) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of ``python -m utils ARGUMENTS`` run in this process."""
    try:
        status = main([str(argument) for argument in arguments])
    except SystemExit as exit_:  # argparse exits on bad usage
        status = exit_.code
    out, err = capsys.readouterr()
    return status, out, err


def assert_one_error(status: int, err: str, *fragments: str) -> None:
    """A clean failure: non-zero status, one ``error:`` line on stderr holding every fragment."""
    lines = err.strip().splitlines()
    assert status != 0 and "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def shapes_args(out: pathlib.Path, num_images: int = 12, seed: int = 0, *extra: str) -> list:
    return ["shapes", "--out", out, "--num-images", num_images, "--seed", seed, *extra]


# --- 1. --overwrite replaces only a folder this program wrote ---------------------------------

def test_overwrite_never_deletes_a_folder_that_merely_holds_images(tmp_path, capsys):
    out = tmp_path / "D"
    (out / "images").mkdir(parents=True)
    (out / "images" / "holiday.jpg").write_text("x")
    status, _, err = run_main(capsys, *shapes_args(out, 20), "--overwrite")
    assert_one_error(status, err, str(out), "did not write")
    assert (out / "images" / "holiday.jpg").read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["D"]


def _dataset_with(tmp_path: pathlib.Path, change) -> pathlib.Path:
    """A dataset this program wrote (seed 1), then changed by ``change(folder)``."""
    folder = shapes.write_dataset(tmp_path / "data", 12, seed=1).parent
    change(folder)
    return folder


@pytest.mark.parametrize("change, reason", [
    (lambda f: (f / "images" / "holiday.jpg").write_text("x"), "holiday.jpg"),
    (lambda f: (f / "notes.txt").write_text("x"), "notes.txt"),
    (lambda f: (f / shapes.MARKER_NAME).unlink(), shapes.MARKER_NAME),
    (lambda f: (f / shapes.MARKER_NAME).write_text("{}"), shapes.MARKER_NAME),
    (lambda f: (f / shapes.JSON_NAME).write_text(
        (f / shapes.JSON_NAME).read_text().replace('"seed":1', '"seed":7')), "sha256"),
])
def test_overwrite_refuses_a_dataset_folder_with_anything_it_cannot_vouch_for(
        tmp_path, capsys, change, reason):
    folder = _dataset_with(tmp_path, change)
    before = sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))
    status, _, err = run_main(capsys, *shapes_args(folder, 12, 2), "--overwrite")
    assert_one_error(status, err, str(folder), reason)
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) == before


def test_overwrite_replaces_a_dataset_this_program_wrote(tmp_path, capsys):
    folder = _dataset_with(tmp_path, lambda f: None)
    marker = json.loads((folder / shapes.MARKER_NAME).read_text())
    assert marker["dataset"] == shapes.JSON_NAME and marker["seed"] == 1
    status, _, err = run_main(capsys, *shapes_args(folder, 12, 2), "--overwrite")
    assert status == 0, err
    assert json.loads((folder / shapes.JSON_NAME).read_text())["seed"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_a_dataset_written_before_marker_files_is_still_reused(tmp_path, capsys, monkeypatch):
    # The book's cached datasets under data/ carry no marker; they must not be rebuilt.
    folder = _dataset_with(tmp_path, lambda f: (f / shapes.MARKER_NAME).unlink())
    monkeypatch.setattr(shapes, "_fill_folder", lambda *args: pytest.fail("written again"))
    assert shapes.write_dataset(folder, 12, seed=1) == folder / shapes.JSON_NAME
    assert "reusing it" in capsys.readouterr().out


# --- 2. a count that cannot fit is refused before anything is built ----------------------------

SIZE_IN_UNITS = r"\d+(\.\d+)? [kMGTPE]?B"


def test_a_count_that_cannot_fit_on_disk_is_refused_up_front(tmp_path, capsys, monkeypatch):
    # Were it not refused, the folder would be filled (or its list built) here: fail fast instead.
    monkeypatch.setattr(shapes, "_fill_folder", lambda *args: pytest.fail("started writing"))
    status, _, err = run_main(capsys, *shapes_args(tmp_path / "big", 10**12))
    assert_one_error(status, err, "1000000000000 images", "free")
    assert len(re.findall(SIZE_IN_UNITS, err)) == 2, err
    assert list(tmp_path.iterdir()) == []


def test_the_disk_space_estimate_refuses_only_what_cannot_fit(tmp_path, capsys, monkeypatch):
    # 64-pixel Shapes PNGs take about 8 kB each (the noise does not compress), the JSON ~1 kB.
    one_megabyte = shutil.disk_usage(tmp_path)._replace(free=1_000_000)
    monkeypatch.setattr(shapes.shutil, "disk_usage", lambda path: one_megabyte)
    status, _, err = run_main(capsys, *shapes_args(tmp_path / "large", 1000))
    assert_one_error(status, err, "1.0 MB", "free")
    status, _, err = run_main(capsys, *shapes_args(tmp_path / "small", 50))
    assert status == 0, err
    written = sum(p.stat().st_size for p in (tmp_path / "small").rglob("*"))
    assert 50 * 7_000 < written < 1_000_000


# --- 7. debris of a killed `shapes` run is removed by the next run, and only that -------------

def _partial_folder(out: pathlib.Path, *files: str) -> pathlib.Path:
    """A staging folder named as `shapes` names them, holding ``files`` (paths inside it)."""
    folder = out.with_name(f".{out.name}.partial-{uuid.uuid4().hex[:12]}")
    for name in files:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"\x89PNG")
    return folder


def test_the_next_run_removes_what_a_killed_run_left_and_nothing_else(tmp_path, capsys):
    fcntl = pytest.importorskip("fcntl")  # a running writer is told apart by its lock
    out = tmp_path / "D"
    writer = subprocess.Popen([sys.executable, "-m", "utils", *map(str, shapes_args(out, 10**5))],
                              cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while len(list(tmp_path.glob(".D.partial-*/images/*.png"))) < 5:
            assert time.monotonic() < deadline and writer.poll() is None, "the writer did not start"
            time.sleep(0.05)
    finally:
        writer.kill()  # SIGKILL: no cleanup code of the writer runs
        writer.wait()
    [killed] = tmp_path.glob(".D.partial-*")
    running = _partial_folder(out, "images/shapes_000000.png")
    foreign = _partial_folder(out, "images/shapes_000000.png", "notes.txt")
    other_dataset = _partial_folder(tmp_path / "E", "images/shapes_000000.png")
    descriptor = os.open(running, os.O_RDONLY)
    fcntl.flock(descriptor, fcntl.LOCK_EX)  # as a writer still at work holds it
    try:
        status, out_text, err = run_main(capsys, *shapes_args(out))
    finally:
        os.close(descriptor)
    assert status == 0, err
    assert not killed.exists() and f"removed {killed}" in out_text
    assert running.exists() and foreign.exists() and other_dataset.exists()


# --- an exported captioner shared by the tests of evaluate and caption -------------------------

WORDS = ["a", "red", "blue", "circle", "square", "left", "of", "and"]


def save_tiny_export(folder: pathlib.Path) -> pathlib.Path:
    """An untrained captioner exported to ``folder/captioner`` (these faults are in the files
    around the model, so no training is needed); returns ``folder``."""
    keras = pytest.importorskip("keras")
    from utils.export import save_captioner
    from utils.captioner import build_captioner
    from utils.text import Vocabulary

    keras.utils.set_random_seed(0)
    vocabulary = Vocabulary(WORDS)
    model = build_captioner(len(vocabulary), filters=(8, 8, 16), embed_dim=8, units=16,
                            attention_units=8, jit_decoder=False)
    model((np.zeros((1, 64, 64, 3), np.uint8), np.zeros((1, 1), np.int32)))
    save_captioner(model, vocabulary, folder / "captioner", image_size=64, max_length=7,
                   profile="smoke")
    return folder


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> pathlib.Path:
    """A run folder holding ``captioner/``; tests that change it work on a copy (:func:`copy`)."""
    return save_tiny_export(tmp_path_factory.mktemp("exported") / "run")


def copy(run: pathlib.Path, tmp_path: pathlib.Path) -> pathlib.Path:
    return pathlib.Path(shutil.copytree(run, tmp_path / "run"))


@pytest.fixture
def good_png(tmp_path) -> pathlib.Path:
    path = tmp_path / "good.png"
    Image.fromarray(np.full((50, 70, 3), 120, np.uint8)).save(path)
    return path


# --- 3, 9. export.json is checked field by field when it is read -------------------------------

@pytest.mark.parametrize("field, value, expected", [
    ("image_size", None, "'image_size' is missing"),
    ("vocabulary_size", None, "'vocabulary_size' is missing"),
    ("image_size", "abc", "'image_size' should be an integer from 8 to 4096, found 'abc'"),
    ("image_size", 10**6, "'image_size' should be an integer from 8 to 4096, found 1000000"),
    ("max_length", 7.5, "'max_length' should be an integer"),
    ("model_sha256", 12, "'model_sha256' should be"),
    ("extra", [], "'extra' should be"),
])
def test_a_malformed_export_json_names_the_file_and_the_field(
        exported, tmp_path, capsys, monkeypatch, good_png, field, value, expected):
    run = copy(exported, tmp_path)
    path = run / "captioner" / "export.json"
    metadata = json.loads(path.read_text())
    if value is None:
        del metadata[field]
    else:
        metadata[field] = value
    path.write_text(json.dumps(metadata))
    # a huge image_size must be refused, not tried: a 10**6-pixel square is a 3 TB resize
    monkeypatch.setattr("utils.export.load_images", lambda *args: pytest.fail("images loaded"))
    status, _, err = run_main(capsys, "caption", "--run", run, good_png)
    assert_one_error(status, err, str(path), expected)


def test_a_null_vocabulary_size_is_blamed_on_export_json(exported, tmp_path, capsys, good_png):
    run = copy(exported, tmp_path)
    path = run / "captioner" / "export.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "vocabulary_size": None}))
    status, _, err = run_main(capsys, "caption", "--run", run, good_png)
    assert_one_error(status, err, str(path), "'vocabulary_size' should be an integer")
    assert "vocabulary.json" not in err


def test_a_damaged_model_file_with_a_matching_hash_is_named(exported, tmp_path, capsys, good_png):
    from utils.checksums import file_sha256

    run = copy(exported, tmp_path)
    model_file, path = run / "captioner" / "model.keras", run / "captioner" / "export.json"
    model_file.write_bytes(model_file.read_bytes()[:5000])  # cut short, then the hash "fixed"
    path.write_text(json.dumps({**json.loads(path.read_text()),
                                "model_sha256": file_sha256(model_file)}))
    status, _, err = run_main(capsys, "caption", "--run", run, good_png)
    assert_one_error(status, err, str(model_file), "cut short or damaged")
    assert "not found" not in err


# --- 11. the export folder is readable by others, as the user's umask says ---------------------

def test_the_export_folder_follows_the_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        run = save_tiny_export(tmp_path / "run")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((run / "captioner").stat().st_mode) == 0o755
    for path in (run / "captioner").iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


# --- 3, 9. run-settings.json is named when it is damaged ---------------------------------------

@pytest.mark.parametrize("content, expected", [
    ("[]", "should hold a JSON object"),
    ('{"dataset": "sha', "is not valid JSON"),
])
def test_a_damaged_run_settings_file_is_named(tmp_path, capsys, content, expected):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run-settings.json").write_text(content)
    status, _, err = run_main(capsys, "train", "--profile", "smoke", "--run", tmp_path / "run")
    assert_one_error(status, err, str(tmp_path / "run" / "run-settings.json"), expected)
    assert (tmp_path / "run" / "run-settings.json").read_text() == content


# --- 6. every argument is checked before anything is written -----------------------------------

def test_an_out_of_range_seed_is_refused_before_the_run_folder_is_made(tmp_path, capsys):
    status, _, err = run_main(capsys, "train", "--profile", "smoke", "--run", tmp_path / "run",
                              "--seed", "99999999999999999999999")
    assert_one_error(status, err, "--seed", "4294967295")
    assert status == 2 and not (tmp_path / "run").exists()


# --- 3, 9, 10. a Karpathy file is checked entry by entry when it is read -----------------------

@pytest.fixture(scope="module")
def karpathy(tmp_path_factory) -> pathlib.Path:
    """A small Karpathy-layout folder (a Shapes dataset, 16 images); copy it to change it."""
    return shapes.write_dataset(tmp_path_factory.mktemp("karpathy") / "other", 16, seed=5).parent


def _first_test_image(data: dict) -> dict:
    return next(image for image in data["images"] if image["split"] == "test")


def _unset_raw(sentence: dict, tokens) -> None:
    del sentence["raw"]
    sentence["tokens"] = tokens


@pytest.mark.parametrize("change, expected", [
    (lambda i: i.update(filename=5), "'filename' should be a relative path (text), found 5"),
    (lambda i: _unset_raw(i["sentences"][1], [1, 2]), "sentence #1: 'tokens' should be a list"),
    (lambda i: i.update(split=["test"]), "'split' should be a split name (text), found"),
    (lambda i: i.update(scene={"image_size": 64, "objects": 3}), "'scene' has no 'objects' list"),
    (lambda i: i["scene"]["objects"][0].update(bbox=[1, 2]), "'scene' object #0 needs a 'bbox'"),
    (lambda i: i.update(sentences=[]), "'sentences' is empty"),
    (lambda i: i.update(filename="/etc/passwd"), "'filename' must stay inside"),
    (lambda i: i.update(filename="../../../../../../etc/passwd"), "'filename' must stay inside"),
    (lambda i: i.update(filepath="/etc", filename="passwd"), "'filepath' must stay inside"),
])
def test_a_malformed_karpathy_entry_is_named_before_any_work(
        exported, karpathy, tmp_path, capsys, change, expected):
    data_dir = pathlib.Path(shutil.copytree(karpathy, tmp_path / "other"))
    path = data_dir / "dataset_shapes.json"
    data = json.loads(path.read_text())
    image = _first_test_image(data)
    change(image)
    path.write_text(json.dumps(data))
    status, _, err = run_main(capsys, "evaluate", "--run", exported, "--split", "test",
                              "--data", data_dir)
    position = data["images"].index(image)
    assert_one_error(status, err, str(path), f"image entry #{position}", expected)
    assert "root:" not in err  # /etc/passwd was never opened


def test_coco_and_flickr8k_image_names_must_stay_inside_their_folders(tmp_path):
    from utils import datasets

    coco = tmp_path / "annotations" / "captions_train2014.json"
    coco.parent.mkdir()
    coco.write_text(json.dumps({"images": [{"id": 1, "file_name": "/etc/passwd"}],
                                "annotations": [{"image_id": 1, "caption": "a red circle"}]}))
    with pytest.raises(ValueError, match="images entry #0: 'file_name' must stay inside"):
        datasets.read_coco_captions(coco)
    (tmp_path / "Flickr8k.token.txt").write_text("../../etc/passwd#0\ta red circle\n")
    for name in datasets.FLICKR8K_SPLIT_FILES.values():
        (tmp_path / name).write_text("../../etc/passwd\n" if "train" in name else "")
    with pytest.raises(ValueError, match="line 1: 'filename' must stay inside"):
        datasets.read_flickr8k(tmp_path)


# --- 4. scores of other data never replace the run's own, and say what they scored -------------

def test_scores_of_other_data_get_a_report_of_their_own(exported, karpathy, tmp_path, capsys,
                                                        monkeypatch):
    run = copy(exported, tmp_path)
    own = run / "scores-test-beam1.json"
    own.write_text('{"CIDEr": 1.0}\n')  # the scores of the run's own test split
    # METEOR starts Java, which takes longer than all the rest; the report is what is tested
    monkeypatch.setattr("utils.metrics.evaluate_captions", lambda *args, **kwargs: {"CIDEr": 0.5})
    status, out, err = run_main(capsys, "evaluate", "--run", run, "--split", "test",
                                "--data", karpathy)
    assert status == 0, err
    assert own.read_text() == '{"CIDEr": 1.0}\n'
    json_path = karpathy / "dataset_shapes.json"
    sha256 = hashlib.sha256(json_path.read_bytes()).hexdigest()
    report_path = run / f"scores-other-{sha256[:8]}-test-beam1.json"
    report = json.loads(report_path.read_text())
    assert report["data"] == str(json_path.resolve()) and report["data_sha256"] == sha256
    assert report["CIDEr"] == 0.5 and f"scores written to {report_path}" in out


# --- 8. one bad image does not stop the others --------------------------------------------------

def test_caption_captions_every_readable_image_and_names_every_bad_one(
        exported, tmp_path, capsys, good_png):
    bad, missing, figures = tmp_path / "bad.png", tmp_path / "missing.png", tmp_path / "figures"
    bad.write_text("<html>404</html>")
    status, out, err = run_main(capsys, "caption", "--run", exported, bad, good_png, missing,
                                "--attention-out", figures)
    assert status == 1 and "Traceback" not in err
    assert out.splitlines()[0].startswith(f"{good_png}: ")
    assert f"attention figures: 1 in {figures}" in out
    assert [p.name for p in figures.iterdir()] == ["good.attention.png"]
    errors = err.strip().splitlines()
    assert len(errors) == 2 and all(line.startswith("error: ") for line in errors), err
    assert str(bad) in errors[0] and "HTML" in errors[0]
    assert str(missing) in errors[1] and "no such file" in errors[1]


# --- 9. a symlink loop and a FIFO are called what they are ---------------------------------------

@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_symlink_loop_and_a_fifo_are_called_what_they_are(exported, tmp_path, capsys):
    loop, fifo = tmp_path / "loop.png", tmp_path / "fifo.png"
    loop.symlink_to(loop)
    os.mkfifo(fifo)  # opening it would wait forever for a writer
    status, out, err = run_main(capsys, "caption", "--run", exported, loop, fifo)
    errors = err.strip().splitlines()
    assert status == 1 and out == "" and len(errors) == 2, err
    assert str(loop) in errors[0] and "symbolic link" in errors[0]
    assert "no such file" not in errors[0]
    assert str(fifo) in errors[1] and "FIFO" in errors[1] and "folder" not in errors[1]


# --- 5. an unreadable checkpoint is reported, and the history stays consistent -----------------

@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """A tiny training run killed after the second of its three epochs (backup/ then holds the
    checkpoints of epochs 2 and 1, history.csv two rows), and what ``fit`` needs to resume it."""
    keras = pytest.importorskip("keras")
    from utils import datasets, text, train
    from utils.profile import get_profile

    class StopAfterSecondEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt

    root = tmp_path_factory.mktemp("interrupted")
    records = datasets.load_karpathy(shapes.write_dataset(root / "data", 24, seed=3))
    vocabulary = text.Vocabulary.from_captions(
        c for r in datasets.split(records, "train") for c in r.captions)
    splits = [datasets.encode_split(datasets.split(records, name), vocabulary, 18, name)
              for name in ("train", "val")]
    profile = get_profile("smoke").replace(
        epochs=3, steps_per_epoch=1, batch_size=4, eval_images=2, cnn_filters=(8, 8, 16),
        embed_dim=8, units=16, attention_units=8, jit_compile=False)
    arguments = (*splits, vocabulary, profile)
    with pytest.raises(KeyboardInterrupt):
        train.fit(_tiny_model(vocabulary, profile), *arguments, root / "run", verbose=0,
                  callbacks=[StopAfterSecondEpoch()])
    return root / "run", arguments


def _tiny_model(vocabulary, profile):
    import keras

    from utils.captioner import captioner_from_profile

    keras.utils.set_random_seed(0)
    return captioner_from_profile(profile, len(vocabulary))


def _history_epochs(run: pathlib.Path) -> list[int]:
    with open(run / "history.csv", newline="") as rows:
        return [int(row["epoch"]) for row in csv.DictReader(rows)]


def test_unreadable_checkpoints_are_reported_and_the_history_kept_consistent(
        interrupted, tmp_path, capsys):
    from utils import train

    run, arguments = copy(interrupted[0], tmp_path), interrupted[1]
    assert _history_epochs(run) == [0, 1]
    latest, best = run / "backup" / "latest.weights.h5", run / "best.weights.h5"
    latest.write_bytes(latest.read_bytes()[:1000])  # cut short, as by a full disk
    best.write_bytes(b"not HDF5")
    history = train.fit(_tiny_model(arguments[2], arguments[3]), *arguments, run, verbose=0)
    err = capsys.readouterr().err
    assert f"warning: {latest} is unreadable (" in err and "resuming after epoch 1" in err, err
    assert f"warning: {best} is unreadable (" in err
    assert "the best epoch is chosen again from epoch 2 on" in err
    assert _history_epochs(run) == [0, 1, 2]  # epoch 2 ran again and has one row, not two
    assert len(history.history["loss"]) == 3
    assert json.loads((run / "best.weights.json").read_text())["epoch"] >= 2


def test_a_finished_run_with_unreadable_best_weights_says_it_trains_again(
        interrupted, tmp_path, capsys):
    import dataclasses

    from utils import train

    _, _, vocabulary, profile = interrupted[1]
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"profile": dataclasses.asdict(profile),
                                              "words": vocabulary.words}))  # as fit writes it
    (run / "best.weights.h5").write_bytes(b"not HDF5")
    assert train.load_finished_run(run, profile, vocabulary) is None
    err = capsys.readouterr().err
    assert f"warning: {run / 'best.weights.h5'} is unreadable (" in err
    assert "trained again from scratch" in err


# --- 7. one spelling of the run folder; every --help shows an example that parses ---------------

def test_the_run_folder_is_required_and_named_in_one_error_line(capsys):
    for command in ("train", "evaluate", "caption"):
        extra = {"evaluate": ["--split", "test"], "caption": ["a.png"]}.get(command, [])
        status, _, err = run_main(capsys, command, *extra)
        assert_one_error(status, err, "--run DIR")
        assert status == 2


@pytest.mark.parametrize("old, command", [("--out", "train"), ("--model", "caption")])
def test_a_former_spelling_still_works_and_says_so(old, command, tmp_path):
    import contextlib
    import io

    from utils.__main__ import build_parser

    extra = ["a.png"] if command == "caption" else []
    parser = build_parser()
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        args = parser.parse_args([command, old, str(tmp_path / "run"), *extra])
    assert args.run_dir == tmp_path / "run"
    assert err.getvalue().strip() == f"note: {old} is deprecated; use --run"


def test_every_command_help_ends_with_an_example_that_parses(capsys):
    import shlex

    from utils.__main__ import _COMMANDS, build_parser

    parser = build_parser()
    assert len(_COMMANDS) == 4
    for name in ("shapes", "train", "evaluate", "caption"):
        with pytest.raises(SystemExit):
            parser.parse_args([name, "--help"])
        example = capsys.readouterr().out.rstrip().splitlines()[-1].strip()
        words = shlex.split(example)
        assert words[:3] == ["python", "-m", "utils"] and words[3] == name, example
        args = parser.parse_args(words[3:])  # no SystemExit: the example is a valid command
        assert args.command == name
        assert capsys.readouterr().err == ""  # and uses no former spelling
