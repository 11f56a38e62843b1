"""Fixtures and hooks shared by the unit tests (tests/README.md tells the whole story).

``smoke_run``
    A captioner trained once per pytest run by ``python -m utils train --profile smoke``, called
    in-process, with its data in a temporary ``BOOK_DATA`` (under pytest-xdist, once for all
    workers). Tests that need *a* trained model (exporting, evaluating, captioning, loading a
    finished run) share it; tests of training itself (resuming, learning a few images) still
    train their own, as small as they can be.
``run_cli``
    ``python -m utils ARGS`` run in-process through ``utils.__main__.main``: the same parser and
    commands without a new Python and a new TensorFlow for every call. ``tests/test_cli.py``
    keeps a few real subprocess runs to prove the module runs as a program.
``java_replay``
    The COCO caption toolkit's Java programs (its PTB tokenizer, its METEOR wrapper, the METEOR
    jar's protocol) answered from golden files under ``tests/golden/``, recorded from the real
    jars; tests marked ``java`` still run the jars (skipped without Java here).
    ``BOOK_RECORD_GOLDEN=1`` records the golden files again (needs Java).
``pytest_xdist_make_scheduler``
    How ``make test`` shares the work between two pytest-xdist workers.

``BOOK_TESTS_EAGER=1`` runs every ``tf.function`` eagerly (``make mutation`` sets it): the same
Python code runs, without tracing a graph per test, several times faster for small tensors.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import io
import json
import os
import pathlib
import shutil
import sys

import pytest

GOLDEN = pathlib.Path(__file__).resolve().parent / "golden"
RECORD_GOLDEN = os.environ.get("BOOK_RECORD_GOLDEN") == "1"


def pytest_configure(config):
    if os.environ.get("BOOK_TESTS_EAGER") == "1":
        import tensorflow as tf

        tf.config.run_functions_eagerly(True)


def pytest_collection_modifyitems(config, items):
    _skip_java_without_java(items)


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist, when it is installed
def pytest_xdist_make_scheduler(config, log):
    """``make test`` runs ``pytest -n 2 --dist loadscope`` over the unit tests and the chapters.
    The chapters are one unit of work, run in order on one worker (later chapters reuse the models
    that earlier ones train into the data folder) and, being the largest unit, first, while the
    other worker takes the unit tests a file at a time. Other ``--dist`` modes are xdist's own."""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ChaptersTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::")[0]
            return "chapters" if path.startswith("chapters/") else path

    return ChaptersTogether(config, log)


def _skip_java_without_java(items) -> None:
    if shutil.which("java") is not None:
        return
    skip = pytest.mark.skip(reason="needs Java: apt-get install default-jre-headless")
    for item in items:
        if "java" in item.keywords:
            item.add_marker(skip)


# --- the command line, in-process --------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CliResult:
    """What ``python -m utils`` would have returned: exit status and the two output streams."""

    returncode: int
    stdout: str
    stderr: str


@contextlib.contextmanager
def _environment(variables: dict[str, str]):
    with pytest.MonkeyPatch.context() as patch:
        for name, value in variables.items():
            patch.setenv(name, value)
        yield


def _tensorflow_state() -> tuple[bool, str]:
    """Op determinism on?, and Keras' dtype policy; read only once TensorFlow is imported."""
    if "tensorflow" not in sys.modules:
        return False, "float32"
    import keras
    from tensorflow.python.framework import config as tf_config

    return tf_config.is_op_determinism_enabled(), keras.mixed_precision.global_policy().name


@contextlib.contextmanager
def _tensorflow_state_kept():
    """`train` calls ``utils.setup()``, which turns on TensorFlow's op determinism and may set
    a mixed-precision policy for the whole process; the tests after it must see neither."""
    before = _tensorflow_state()
    try:
        yield
    finally:
        if _tensorflow_state() != before:
            import keras
            from tensorflow.python.framework import config as tf_config

            determinism, policy = before
            (tf_config.enable_op_determinism if determinism
             else tf_config.disable_op_determinism)()
            keras.mixed_precision.set_global_policy(policy)


def cli_in_process(*arguments, env: dict[str, str] | None = None) -> CliResult:
    """Run ``python -m utils *arguments`` through ``utils.__main__.main`` and capture its output
    (argparse's usage errors exit with status 2, as the program does)."""
    from utils.__main__ import main

    stdout, stderr = io.StringIO(), io.StringIO()
    with (_environment(env or {}), _tensorflow_state_kept(), contextlib.redirect_stdout(stdout),
          contextlib.redirect_stderr(stderr)):
        try:
            status = main([str(argument) for argument in arguments])
        except SystemExit as exit_:
            status = exit_.code if isinstance(exit_.code, int) else 1
    return CliResult(status, stdout.getvalue(), stderr.getvalue())


@pytest.fixture
def run_cli():
    """``run_cli(*arguments, env={...})`` -> :class:`CliResult`, in this process."""
    return cli_in_process


# --- one trained smoke captioner per pytest run ------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SmokeRun:
    """A finished ``train --profile smoke`` run and how it was made."""

    data: pathlib.Path  # BOOK_DATA of the run (its Shapes dataset is in there)
    out: pathlib.Path  # the run folder given to --out
    arguments: tuple[str, ...]  # the train command, without "python -m utils"
    output: str  # what the command printed

    @property
    def env(self) -> dict[str, str]:
        return {"BOOK_DATA": str(self.data), "BOOK_PROFILE": "smoke"}

    @property
    def export(self) -> pathlib.Path:
        return self.out / "captioner"

    @property
    def training(self) -> pathlib.Path:
        return self.out / "training"


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory, worker_id) -> SmokeRun:
    """The smoke-profile captioner, trained once per pytest run, also under pytest-xdist: the
    first worker to need it trains it under a lock, the others find it done (read-only for the
    tests: copy it before changing anything)."""
    shared = tmp_path_factory.getbasetemp()
    if worker_id != "master":  # each xdist worker has its own base folder in a shared one
        shared = shared.parent
    root = shared / "smoke-run"
    out, data, printed = root / "runs" / "smoke", root / "data", root / "train-output.txt"
    arguments = ("train", "--dataset", "shapes", "--profile", "smoke", "--run", str(out),
                 "--seed", "0")
    with open(shared / "smoke-run.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not printed.exists():
            result = cli_in_process(*arguments, env={"BOOK_DATA": str(data),
                                                     "BOOK_PROFILE": "smoke"})
            assert result.returncode == 0, result.stderr[-3000:]
            printed.write_text(result.stdout)
    return SmokeRun(data, out, arguments, printed.read_text())


@pytest.fixture(scope="session")
def worker_id(request) -> str:
    """pytest-xdist's worker name ("gw0", ...), or "master" when tests run in one process; the
    same as xdist's fixture of this name, and there also when xdist is not installed."""
    return getattr(request.config, "workerinput", {}).get("workerid", "master")


# --- the toolkit's Java programs, replayed ------------------------------------------------------


def _key(value) -> str:
    """A stable name for a call's input: the SHA-256 of its JSON."""
    return hashlib.sha256(json.dumps(value, ensure_ascii=False).encode()).hexdigest()[:24]


class GoldenCalls:
    """Answers of one program, recorded per input in ``tests/golden/<name>.json``.

    ``call(input, run)`` returns the recorded answer for ``input``; when recording
    (``BOOK_RECORD_GOLDEN=1``) it runs ``run(input)`` instead and keeps the answer. A missing
    answer is an error that says how to record it, never a silent call to Java.
    """

    def __init__(self, name: str, source: str):
        self.path = GOLDEN / f"{name}.json"
        self.source = source
        stored = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.answers: dict = stored.get("answers", {})
        self.used: set[str] = set()

    def call(self, value, run):
        key = _key(value)
        self.used.add(key)
        if RECORD_GOLDEN:
            self.answers[key] = run(value)
        elif key not in self.answers:
            raise LookupError(f"{self.path.name} has no answer for this input; record it with "
                              f"BOOK_RECORD_GOLDEN=1 pytest {self.source} (needs Java)")
        return self.answers[key]

    def save(self) -> None:
        """Write the answers used in this run (recording only), so unused ones drop out."""
        if not RECORD_GOLDEN or not self.used:
            return
        kept = {key: self.answers[key] for key in sorted(self.used)}
        self.path.parent.mkdir(exist_ok=True)
        self.path.write_text(json.dumps({"recorded_from": self.source, "answers": kept},
                                        ensure_ascii=False, indent=0) + "\n")


@pytest.fixture(scope="session")
def java_replay():
    """``java_replay(name)`` -> :class:`GoldenCalls` for one program; saved at the end of the
    run when recording."""
    calls: dict[str, GoldenCalls] = {}

    def golden(name: str, source: str = "tests/test_metrics.py") -> GoldenCalls:
        if name not in calls:
            calls[name] = GoldenCalls(name, source)
        return calls[name]

    yield golden
    for recorded in calls.values():
        recorded.save()
