"""The captioner trains under MirroredStrategy, here over two logical CPU devices.

TensorFlow fixes its devices when it starts, so the check runs in a fresh Python process.
"""
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import numpy as np, tensorflow as tf, keras
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
    from utils.captioner import build_captioner

    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (8, 64, 64, 3), dtype=np.uint8)
    captions = np.array([[2, 4 + i % 5, 5, 3, 0, 0] for i in range(8)], np.int32)

    def one_step(strategy):
        keras.utils.set_random_seed(3)
        with strategy.scope():
            model = build_captioner(12, filters=(8, 8, 16), embed_dim=8, units=16, attention_units=8,
                              jit_decoder=False)
            model((images[:1], captions[:1, :-1]))
            model.compile(optimizer=keras.optimizers.SGD(0.5))
        data = tf.data.Dataset.from_tensor_slices((images, captions)).batch(8)
        history = model.fit(data, epochs=1, verbose=0)
        return model, history.history["loss"][0]

    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert mirrored.num_replicas_in_sync == 2
    single, single_loss = one_step(tf.distribute.OneDeviceStrategy("/cpu:0"))
    double, double_loss = one_step(mirrored)
    # Each replica sees half the batch; the summed gradients must equal the whole batch's.
    np.testing.assert_allclose(double_loss, single_loss, rtol=1e-4)
    for a, b in zip(single.trainable_variables, double.trainable_variables):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-3, atol=1e-5)
    print("mirrored ok", single_loss, double_loss)
""")


@pytest.mark.slow
def test_mirrored_strategy_on_two_logical_cpus_matches_one_device():
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "mirrored ok" in result.stdout


def test_one_device_without_gpus_or_tpus(monkeypatch):
    import tensorflow as tf

    from utils import train

    monkeypatch.delenv("COLAB_TPU_ADDR", raising=False)
    monkeypatch.delenv("TPU_NAME", raising=False)
    assert train.distribution_strategy().num_replicas_in_sync == 1
    assert not isinstance(train.distribution_strategy(), tf.distribute.MirroredStrategy)
