"""The captioner on Keras 3's other backends (issue 21, begun): the same weights give the same
loss under JAX as under TensorFlow.

Keras fixes its backend when it is first imported, so the JAX side runs in a new process with
``KERAS_BACKEND=jax``; the weights travel as a ``.weights.h5`` file, which every backend reads.
"""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def tiny_loss(weights: str, mode: str) -> dict:
    """Build the tiny captioner on this process's backend, save its weights to ``weights``
    (``mode="save"``) or load them from there, and return the backend and the loss of a fixed
    batch."""
    import keras

    from utils.captioner import build_captioner

    keras.utils.set_random_seed(0)
    # cached features, not the CNN: every operation is compiled on its first use under JAX
    model = build_captioner(20, encoder="features", region_dim=8, embed_dim=8, units=16,
                            attention_units=8, jit_decoder=False)
    rng = np.random.default_rng(0)
    images = rng.normal(size=(4, 16, 12)).astype(np.float16)  # [B, R, C] features
    captions = np.array([[2, 5, 6, 3, 0], [2, 7, 3, 0, 0], [2, 9, 10, 11, 3], [2, 4, 3, 0, 0]],
                        np.int32)
    model((images[:1], captions[:1, :-1]))
    if mode == "save":
        model.save_weights(weights)
    else:
        model.load_weights(weights)
    loss = model.objective(images, captions).loss
    return {"backend": keras.backend.backend(),
            "loss": float(keras.ops.convert_to_numpy(loss))}


def test_the_jax_backend_computes_the_tensorflow_loss(tmp_path):
    pytest.importorskip("jax", reason="JAX is a pinned test dependency (requirements-dev.txt)")
    weights = tmp_path / "tiny.weights.h5"
    on_tensorflow = tiny_loss(str(weights), "save")  # this process: TensorFlow
    code = ("import json, sys; from tests.test_backends import tiny_loss; "
            "print(json.dumps(tiny_loss(sys.argv[1], 'load')))")
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code, str(weights)], env=env,
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    on_jax = json.loads(done.stdout.strip().splitlines()[-1])
    assert (on_tensorflow["backend"], on_jax["backend"]) == ("tensorflow", "jax")
    np.testing.assert_allclose(on_jax["loss"], on_tensorflow["loss"], rtol=1e-5)
