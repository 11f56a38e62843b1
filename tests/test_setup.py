"""The Setup path: tested versions equal the pins, Colab never gets a CPU TensorFlow."""
import os
import pathlib
import re
import subprocess
import sys
import tomllib

import pytest

import utils

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        match = re.match(r"([A-Za-z0-9_.-]+)==([^\s#]+)", line)
        if match:
            pins[match.group(1).lower()] = match.group(2)
    return pins


def test_tested_versions_equal_the_pins():
    pins = _pins()
    assert pins["tensorflow-cpu"].startswith(utils.TESTED_VERSIONS["tensorflow"] + ".")
    assert pins["keras"].startswith(utils.TESTED_VERSIONS["keras"] + ".")


def test_the_package_never_pulls_tensorflow_onto_colab():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + sum(project["optional-dependencies"].values(), [])
    assert not [r for r in requirements if re.match(r"(tensorflow|keras|tf-)", r, re.I)]


def test_version_warnings():
    assert utils.version_warnings({"tensorflow": "2.21.0", "keras": "3.15.1"}) == []
    lines = utils.version_warnings({"tensorflow": "2.19.0", "keras": "3.15.1"})
    assert len(lines) == 1 and "2.19.0" in lines[0] and "2.21" in lines[0]
    assert utils.version_warnings({"keras": "3.15.1"}) == []  # JAX or PyTorch: no TensorFlow


def test_colab_data_goes_to_drive_when_mounted(monkeypatch):
    monkeypatch.setattr(utils.os.path, "isdir", lambda path: path == "/content/drive/MyDrive")
    assert utils._colab_data_folder() == utils.COLAB_DRIVE_DATA
    monkeypatch.setattr(utils.os.path, "isdir", lambda path: False)
    assert utils._colab_data_folder() == utils.COLAB_DATA


def test_setup_on_colab_sets_the_data_folder_and_warns_without_gpu(monkeypatch, capsys):
    pytest.importorskip("tensorflow")
    monkeypatch.setattr(utils, "on_colab", lambda: True)
    monkeypatch.setattr(utils.os.path, "isdir", lambda path: False)
    monkeypatch.delenv("BOOK_DATA", raising=False)
    utils.setup("smoke")
    printed = capsys.readouterr().out
    assert utils.os.environ["BOOK_DATA"] == utils.COLAB_DATA
    assert "data folder: /content/image-understanding-data" in printed
    assert "no GPU" in printed and "Change runtime type" in printed
    monkeypatch.delenv("BOOK_DATA")


def test_mixed_precision_only_where_a_gpu_is_visible(monkeypatch):
    tf = pytest.importorskip("tensorflow")
    import keras

    try:
        assert utils.set_precision(False) == "float32"
        monkeypatch.setattr(tf.config, "list_physical_devices",
                            lambda kind=None: [] if kind == "GPU" else ["CPU"])
        assert utils.set_precision(True) == "float32"  # float16 on a CPU is slower, not faster
        monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: ["GPU:0"])
        assert utils.set_precision(True) == "mixed_float16"
        assert keras.mixed_precision.global_policy().name == "mixed_float16"
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_tensorflow_start_up_notices_are_hidden_and_other_lines_passed_on(tmp_path):
    """TensorFlow 2.21 writes its start-up notices to descriptor 2 whatever
    TF_CPP_MIN_LOG_LEVEL says; a stand-in ``tensorflow`` writes two of them and a real error."""
    (tmp_path / "tensorflow.py").write_text(
        "import os\n"
        "os.write(2, b'WARNING: All log messages before absl::InitializeLog() is called are "
        "written to STDERR\\n')\n"
        "os.write(2, b'I0000 00:00:1796591153.161191    3570 port.cc:153] oneDNN custom "
        "operations are on.\\n')\n"
        "os.write(2, b'a real problem\\n')\n")
    code = "import utils, sys; tf = utils.import_tensorflow(); print(tf.__name__, sys.stderr.name)"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "tensorflow <stderr>\n"
    assert done.stderr == "a real problem\n"


def test_the_real_tensorflow_starts_without_a_log_line():
    code = "import utils; utils.import_tensorflow(); import keras; print('ok')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert (done.returncode, done.stdout, done.stderr) == (0, "ok\n", "")


def test_tensorflow_logs_are_quiet_unless_the_reader_asked(monkeypatch):
    """Level 3: tf.data's harmless ``E0000 ... use_unbounded_threadpool`` lines, which ``fit``
    prints at level 2, stay out of the stored outputs (tests/test_book.py checks those)."""
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    utils.quiet_tensorflow()
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "3"
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
    utils.quiet_tensorflow()
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"
