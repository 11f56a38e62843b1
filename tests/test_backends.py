"""The captioner on Keras 3's three backends (issue 21): given the same weights, TensorFlow, JAX
and (where installed) PyTorch compute the same loss, the same greedy and beam captions, and the
same training step; in a process where TensorFlow cannot be imported, the smoke profile trains,
resumes a killed run to the same weights and captions on JAX (and PyTorch, where installed), and
the GPU check's timings run.

Keras fixes its backend when it is first imported, so each other backend runs in a new process
with ``KERAS_BACKEND`` set; the weights travel as a ``.weights.h5`` file, which every backend
reads.
"""
import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
MAX_LENGTH = 6


def tiny_batch() -> tuple[np.ndarray, np.ndarray]:
    """Four images' cached features ``float16[4, 16, 12]`` and their captions ``int32[4, 5]``."""
    rng = np.random.default_rng(0)
    features = rng.normal(size=(4, 16, 12)).astype(np.float16)
    captions = np.array([[2, 5, 6, 3, 0], [2, 7, 3, 0, 0], [2, 9, 10, 11, 3], [2, 4, 3, 0, 0]],
                        np.int32)
    return features, captions


def tiny_run(weights: str, mode: str) -> dict:
    """Build the tiny captioner on this process's backend. ``mode="save"``: train it a few
    steps, so that its captions are not those of random weights, and save its weights to
    ``weights``; ``mode="load"``: load them from there. Then return the backend, the loss of a
    fixed batch, its greedy and beam captions, and the loss after one SGD step."""
    import keras

    from utils.captioner import build_captioner, greedy_decode
    from utils.decoding import decode_images

    keras.utils.set_random_seed(0)
    # cached features, not the CNN: every operation is compiled on its first use under JAX
    model = build_captioner(20, encoder="features", region_dim=8, embed_dim=8, units=16,
                            attention_units=8, jit_decoder=False)
    features, captions = tiny_batch()
    model((features[:1], captions[:1, :-1]))
    if mode == "save":
        model.compile(optimizer=keras.optimizers.Adam(0.03))
        for _ in range(8):
            model.train_on_batch(features, captions)
        model.save_weights(weights)
    else:
        model.load_weights(weights)

    def numbers(tensor):
        return keras.ops.convert_to_numpy(tensor).tolist()

    run = {
        "backend": keras.backend.backend(),
        "loss": float(numbers(model.objective(features, captions).loss)),
        "greedy": numbers(decode_images(model, features, max_length=MAX_LENGTH).sequences),
        "greedy_loop": numbers(greedy_decode(model, features, MAX_LENGTH)[0]),
        "beam": numbers(decode_images(model, features, max_length=MAX_LENGTH,
                                      beam_size=3).sequences),
    }
    model.compile(optimizer=keras.optimizers.SGD(0.5))
    model.train_on_batch(features, captions)
    run["loss_after_step"] = float(numbers(model.objective(features, captions).loss))
    # compiled searches must read the weights as they are now, not as when first compiled
    for compiled in (True, False):
        run[f"beam_after_step_{compiled}"] = numbers(decode_images(
            model, features, max_length=MAX_LENGTH, beam_size=3, compiled=compiled).sequences)
    return run


def run_on(backend: str, weights) -> dict:
    """:func:`tiny_run` in a new process on ``backend``, loading ``weights``."""
    code = ("import json, sys; from tests.test_backends import tiny_run; "
            "print(json.dumps(tiny_run(sys.argv[1], 'load')))")
    env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code, str(weights)], env=env,
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def assert_same_model(other: dict, tensorflow: dict, backend: str) -> None:
    assert (tensorflow["backend"], other["backend"]) == ("tensorflow", backend)
    np.testing.assert_allclose(other["loss"], tensorflow["loss"], rtol=1e-5)
    for search in ("greedy", "greedy_loop", "beam", "beam_after_step_True"):
        assert other[search] == tensorflow[search], search
    assert other["beam_after_step_True"] == other["beam_after_step_False"]
    np.testing.assert_allclose(other["loss_after_step"], tensorflow["loss_after_step"],
                               rtol=1e-4)


@pytest.fixture(scope="module")
def on_tensorflow(tmp_path_factory) -> tuple[dict, pathlib.Path]:
    weights = tmp_path_factory.mktemp("backends") / "tiny.weights.h5"
    run = tiny_run(str(weights), "save")  # this process: TensorFlow
    # the captions are a test only if the model writes some
    assert any(3 in row[0] for row in run["greedy"]), run["greedy"]
    assert run["loss_after_step"] < run["loss"]
    assert run["beam_after_step_True"] == run["beam_after_step_False"] != run["beam"]
    return run, weights


def test_jax_computes_what_tensorflow_computes(on_tensorflow):
    pytest.importorskip("jax", reason="JAX is a pinned test dependency (requirements-dev.txt)")
    tensorflow, weights = on_tensorflow
    assert_same_model(run_on("jax", weights), tensorflow, "jax")


@pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                    reason="PyTorch is not installed (it is not a test dependency: a CPU wheel "
                           "is about 200 MB); pip install torch to run this test")
def test_pytorch_computes_what_tensorflow_computes(on_tensorflow):
    tensorflow, weights = on_tensorflow
    assert_same_model(run_on("torch", weights), tensorflow, "torch")


WITHOUT_TENSORFLOW = """
import importlib.machinery, json, pathlib, sys


class PathFinderWithoutTensorFlow(importlib.machinery.PathFinder):
    # as on a GPU machine without TensorFlow: `import tensorflow` raises ModuleNotFoundError and
    # importlib.util.find_spec("tensorflow") is None
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.split(".")[0] == "tensorflow":
            return None
        return super().find_spec(name, path, target)


sys.meta_path[:] = [PathFinderWithoutTensorFlow if finder is importlib.machinery.PathFinder
                    else finder for finder in sys.meta_path]
import keras, numpy as np
from utils import evaluation, train
from utils.captioner import captioner_from_profile
from utils.profile import get_profile

import utils
utils.setup("smoke")  # prints the backend's versions line
profile = get_profile("smoke").replace(dropout=0.3)  # a resumed run must repeat dropout's masks
vocabulary, splits = train.prepare_shapes(profile)
folder = pathlib.Path(sys.argv[1])


class Final(keras.callbacks.Callback):
    # the weights at the end of the last epoch (fit then loads the best epoch's)
    epochs = 0

    def on_epoch_end(self, epoch, logs=None):
        self.epochs += 1

    def on_train_end(self, logs=None):
        self.weights = self.model.get_weights()


class Interrupt(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        raise KeyboardInterrupt  # as ^C would


def fit(run, callback):
    keras.utils.set_random_seed(0)
    model = captioner_from_profile(profile, len(vocabulary))
    history = train.fit(model, splits["train"], splits["val"], vocabulary, profile,
                        folder / run, verbose=0, callbacks=[callback])
    return model, history


whole = Final()
model, history = fit("whole", whole)
scored = evaluation.score_split(model, splits["test"], vocabulary,
                                profile.max_caption_tokens + 1, count=8, metrics=["Bleu_4"])
try:  # the same run killed after its first epoch, then started again
    fit("killed", Interrupt())
except KeyboardInterrupt:
    pass
resumed = Final()
fit("killed", resumed)
identical = all(np.array_equal(a, b) for a, b in zip(resumed.weights, whole.weights, strict=True))
# and the GPU check's timings, at tiny sizes (benchmarks/gpu_check.py runs on bare GPU images)
from benchmarks import gpu_check
plan = gpu_check.QUICK
training = [gpu_check.training_speed(plan.sizes, "mixed_bfloat16", 8, 1, 1)]  # float32: above
decoding = gpu_check.decoding_speed(plan.sizes, 1)
print(json.dumps({"backend": keras.backend.backend(), "loss": history.history["loss"],
                  "log_v": float(np.log(len(vocabulary))), "captions": scored.captions,
                  "resumed_epochs": resumed.epochs, "resumed_identical": identical,
                  "training": training, "decoding": decoding,
                  "modules": sorted(m for m in sys.modules if m.startswith("tensorflow"))}))
"""


def without_tensorflow(backend: str, folder: pathlib.Path):
    """The smoke profile trained (and a run of it killed and resumed), scored, and the GPU check
    timed, on ``backend`` in a process where TensorFlow cannot be imported."""
    # JAX compiles each of the three fits' kernels (about 130, mostly the initializers' tiny
    # ones) again for each new model; its persistent cache lets the second and third reuse the
    # first's, which halves this test on 2 cores. It is the same computation, so the resumed
    # run's weights must still equal the uninterrupted one's bit for bit.
    env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": str(ROOT),
           "JAX_COMPILATION_CACHE_DIR": str(folder / "jax-cache"),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
           "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1"}
    done = subprocess.run([sys.executable, "-c", WITHOUT_TENSORFLOW, str(folder)], env=env,
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    run = json.loads(done.stdout.strip().splitlines()[-1])
    assert run["backend"] == backend
    assert f"| Keras backend {backend} " in done.stdout and "| devices: CPU" in done.stdout
    assert run["modules"] == []
    assert len(run["loss"]) == 2 and run["loss"][-1] < run["log_v"] - 0.5, run["loss"]
    assert len(run["captions"]) == 8 and all(isinstance(c, str) for c in run["captions"])
    assert (folder / "whole" / "best.weights.h5").exists()
    # only the second epoch was left, and it ended with the uninterrupted run's weights
    assert run["resumed_epochs"] == 1 and run["resumed_identical"]
    assert [(run["policy"], run["batch"]) for run in run["training"]] == [("mixed_bfloat16", 8)]
    assert all(run["ms_per_step"] > 0 and run["real_tokens_per_second"] > 0
               for run in run["training"]), run["training"]
    assert [run["search"] for run in run["decoding"]] == ["greedy", "beam 3"]
    assert all(run["captions_per_second"] > 0 for run in run["decoding"]), run["decoding"]


def test_the_smoke_profile_and_the_gpu_check_run_on_jax_without_tensorflow(tmp_path):
    pytest.importorskip("jax", reason="JAX is a pinned test dependency (requirements-dev.txt)")
    without_tensorflow("jax", tmp_path)


@pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                    reason="PyTorch is not installed (it is not a test dependency: a CPU wheel "
                           "is about 200 MB); pip install torch to run this test")
def test_the_smoke_profile_and_the_gpu_check_run_on_pytorch_without_tensorflow(tmp_path):
    without_tensorflow("torch", tmp_path)
