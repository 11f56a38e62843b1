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
    monkeypatch.setattr(train, "TPU_DEVICE_FILES", ())
    assert train.tpu_resolver() is None
    assert train.distribution_strategy().num_replicas_in_sync == 1
    assert not isinstance(train.distribution_strategy(), tf.distribute.MirroredStrategy)


def test_a_tpu_vm_is_found_by_its_device_files_and_one_that_fails_is_left(monkeypatch, tmp_path,
                                                                          capsys):
    """Current Colab TPU runtimes are TPU VMs: no TPU variable is set, the chips appear as
    device files, and TensorFlow's TPU guide connects with ``TPUClusterResolver(tpu="local")``.
    A TPU that will not start (here: initialisation raises) is reported and trained without."""
    import tensorflow as tf

    from utils import train

    monkeypatch.delenv("COLAB_TPU_ADDR", raising=False)
    monkeypatch.delenv("TPU_NAME", raising=False)
    (tmp_path / "accel0").touch()
    monkeypatch.setattr(train, "TPU_DEVICE_FILES", (str(tmp_path / "accel[0-9]*"),))
    resolver = train.tpu_resolver()
    assert isinstance(resolver, tf.distribute.cluster_resolver.TPUClusterResolver)
    assert resolver.master() == ""  # "local": the chips attached to this machine

    def no_tpu(resolver):
        raise tf.errors.NotFoundError(None, None, "TPUs not found in the cluster")

    monkeypatch.setattr(tf.config, "experimental_connect_to_cluster", lambda resolver: None)
    monkeypatch.setattr(tf.tpu.experimental, "initialize_tpu_system", no_tpu)
    strategy = train.distribution_strategy()
    assert strategy.num_replicas_in_sync == 1
    assert capsys.readouterr().err == ("warning: a TPU was found but could not be started "
                                       "(TPUs not found in the cluster); training without it\n")
    monkeypatch.setenv("COLAB_TPU_ADDR", "10.0.0.2:8470")  # a retired Colab TPU node
    assert train.tpu_resolver().master() == "grpc://10.0.0.2:8470"
