import json
import socket
import warnings

import numpy as np
import pytest
from PIL import Image

tf = pytest.importorskip("tensorflow")
import keras  # noqa: E402

from utils import features  # noqa: E402
from utils.features import (  # noqa: E402
    BACKBONES, FeatureCache, WeightsUnavailableError, build_backbone, extract_features, preprocess,
)
from utils.images import ImageError, SkippedImagesWarning  # noqa: E402


@pytest.fixture(scope="module")
def shapes_cnn():
    """One randomly initialised small CNN, shared so that its features are comparable."""
    return build_backbone("shapes_cnn", weights=None)


@pytest.fixture
def photos(tmp_path):
    """Ten random images of various sizes and their keys."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    folder.mkdir()
    paths = []
    for index in range(10):
        size = (40 + 3 * index, 70 - 2 * index, 3)
        path = folder / f"photo_{index}.{'jpg' if index % 2 else 'png'}"
        Image.fromarray(rng.integers(0, 256, size, np.uint8)).save(path)
        paths.append(path)
    return paths, [path.name for path in paths]


class CountingModel:
    """Wraps a backbone, counts ``predict_on_batch`` calls, and can fail at a chosen call."""

    def __init__(self, model, fail_on_call=None, error=RuntimeError):
        self.model, self.fail_on_call, self.error, self.calls = model, fail_on_call, error, 0

    def __getattr__(self, name):
        return getattr(self.model, name)

    def predict_on_batch(self, pixels):
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise self.error("stopped on purpose")
        return self.model.predict_on_batch(pixels)


def extract(photos, cache_dir, model, **options):
    paths, keys = photos
    options = {"batch_size": 2, "shard_size": 4, "progress": False, **options}
    return extract_features("shapes_cnn", paths, keys, cache_dir, weights=None, model=model,
                            **options)


def test_inception_v3_gives_64_regions_of_2048():
    model = build_backbone("inception_v3", weights=None)
    pixels = np.random.default_rng(0).integers(0, 256, (2, 299, 299, 3), np.uint8)
    regions = model(pixels).numpy()  # eager calls: tracing would cost more than it saves here
    assert regions.shape == (2, 64, 2048)
    # uint8 and float pixels are the same input: normalisation happens inside the model
    np.testing.assert_allclose(model(pixels.astype("float32")), regions, atol=1e-5)


@pytest.mark.parametrize("name", ["resnet50", "mobilenet_v3", "efficientnet_b0", "shapes_cnn"])
def test_each_backbone_gives_its_region_grid(name):
    backbone = BACKBONES[name]
    model = build_backbone(name, weights=None)
    side = backbone.input_size
    regions = model(np.zeros((1, side, side, 3), np.uint8))
    assert regions.shape == (1, *backbone.feature_shape)
    assert backbone.regions == backbone.grid[0] * backbone.grid[1]


def test_preprocess_follows_each_backbone():
    pixels = np.array([[[[0, 128, 255]]]], np.uint8)
    np.testing.assert_allclose(preprocess("inception_v3", pixels), [[[[-1, 128 / 127.5 - 1, 1]]]],
                               atol=1e-6)
    # caffe style: channels reversed to BGR, ImageNet mean (B 103.939, G 116.779, R 123.68) removed
    np.testing.assert_allclose(preprocess("resnet50", pixels),
                               [[[[255 - 103.939, 128 - 116.779, 0 - 123.68]]]], atol=1e-4)
    np.testing.assert_array_equal(preprocess("efficientnet_b0", pixels), pixels.astype("float32"))


def test_the_small_cnn_has_no_imagenet_weights():
    with pytest.raises(ValueError, match="trained from scratch together with the decoder"):
        build_backbone("shapes_cnn")


def test_unknown_backbone_lists_the_known_ones():
    with pytest.raises(ValueError, match="inception_v3, resnet50"):
        build_backbone("vgg16", weights=None)


def test_weights_from_a_file(tmp_path):
    reference = build_backbone("mobilenet_v3", weights=None)
    path = tmp_path / "mobilenet.weights.h5"
    reference.get_layer(index=2).save_weights(path)  # the keras.applications network itself
    loaded = build_backbone("mobilenet_v3", weights=path)
    pixels = np.random.default_rng(1).integers(0, 256, (1, 224, 224, 3), np.uint8)
    np.testing.assert_allclose(loaded(pixels), reference(pixels), atol=1e-6)
    with pytest.raises(FileNotFoundError, match="nowhere.h5"):
        build_backbone("mobilenet_v3", weights=tmp_path / "nowhere.h5")


def test_small_cnn_weights_from_a_file(tmp_path, shapes_cnn):
    path = tmp_path / "encoder.weights.h5"
    shapes_cnn.save_weights(path)
    loaded = build_backbone("shapes_cnn", weights=path)
    pixels = np.random.default_rng(2).integers(0, 256, (2, 64, 64, 3), np.uint8)
    np.testing.assert_allclose(loaded.predict_on_batch(pixels), shapes_cnn.predict_on_batch(pixels),
                               atol=1e-6)


def test_offline_imagenet_weights_say_what_to_do(tmp_path, monkeypatch):
    # Offline for certain (this machine is; CI may not be): no host name resolves. Keras' own
    # download code runs and fails as it does without internet. Its cache is redirected to an
    # empty folder so that a weights file downloaded earlier cannot make the build succeed.
    def no_network(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(keras.src.backend.config, "_KERAS_DIR", str(tmp_path))
    with pytest.raises(WeightsUnavailableError) as caught:
        build_backbone("inception_v3")
    message = str(caught.value)
    assert isinstance(caught.value, RuntimeError)
    assert "ImageNet weights for inception_v3 are not available" in message
    assert ("https://storage.googleapis.com/tensorflow/keras-applications/inception_v3/"
            "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5") in message
    assert f"into {tmp_path / 'models'}/" in message
    assert "weights='/path/to/inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5'" in message
    assert "BOOK_DATASET=shapes" in message
    assert "URL fetch failure" in str(caught.value.__cause__)


def test_cache_layout_and_contents(tmp_path, photos, shapes_cnn):
    cache = extract(photos, tmp_path / "cache", shapes_cnn)
    folder = tmp_path / "cache" / "shapes_cnn"
    assert sorted(path.name for path in folder.iterdir()) == ["index.json"] + [
        f"shard_0000{n}.{kind}.npy" for n in range(3) for kind in ("features", "keys")]
    index = json.loads((folder / "index.json").read_text())
    assert index["settings"]["input_size"] == 64 and index["settings"]["dtype"] == "float16"
    assert index["settings"]["weights"] == "random initialisation"
    assert index["keys"]["photo_5.jpg"] == [1, 1]
    stored_keys = np.load(folder / "shard_00001.keys.npy", allow_pickle=False)
    assert stored_keys.dtype.kind == "U" and list(stored_keys) == photos[1][4:8]
    # what is cached is what the model computes from the loaded, resized image
    pixels = np.stack([np.asarray(Image.open(photos[0][3]).convert("RGB").resize((64, 64),
                                                                                 Image.BILINEAR))])
    expected = shapes_cnn.predict_on_batch(pixels)[0]
    assert cache.get("photo_3.jpg").dtype == np.float16
    np.testing.assert_allclose(cache.get("photo_3.jpg"), expected, rtol=2e-3, atol=2e-3)
    assert cache.keys == photos[1] and "photo_9.jpg" in cache and "other" not in cache
    reopened = FeatureCache(tmp_path / "cache", "shapes_cnn")
    np.testing.assert_array_equal(reopened.get("photo_7.jpg"), cache.get("photo_7.jpg"))


def test_float16_shards_take_half_the_bytes_of_float32_npy(tmp_path, photos, shapes_cnn):
    cache = extract(photos, tmp_path / "cache", shapes_cnn)
    assert cache.nbytes_per_image == 64 * 128 * 2
    assert cache.float32_npy_bytes == 10 * (128 + 64 * 128 * 4)  # one .npy per image
    assert cache.disk_bytes / cache.float32_npy_bytes == pytest.approx(0.5, abs=0.01)


@pytest.mark.parametrize("error, cached_after_stop", [
    (RuntimeError, 4),  # an error at the third batch: the first shard (4 images) is complete
    (KeyboardInterrupt, 6),  # Ctrl-C at the fourth: the batches computed so far are written
])
def test_interrupted_extraction_resumes_without_recomputing(tmp_path, photos, shapes_cnn, error,
                                                            cached_after_stop):
    complete = extract(photos, tmp_path / "uninterrupted", shapes_cnn)
    stops_at = 3 if error is RuntimeError else 4
    with pytest.raises(error, match="on purpose"):
        extract(photos, tmp_path / "cache", CountingModel(shapes_cnn, stops_at, error))
    assert len(FeatureCache(tmp_path / "cache", "shapes_cnn")) == cached_after_stop
    counting = CountingModel(shapes_cnn)
    resumed = extract(photos, tmp_path / "cache", counting)
    assert counting.calls == (10 - cached_after_stop) // 2  # batches of two, cached ones skipped
    assert resumed.keys == photos[1]
    for key in photos[1]:
        np.testing.assert_array_equal(resumed.get(key), complete.get(key))
    counting.calls = 0
    extract(photos, tmp_path / "cache", counting)
    assert counting.calls == 0


def test_a_kill_between_shard_and_index_leaves_a_consistent_cache(tmp_path, photos, shapes_cnn,
                                                                 monkeypatch):
    real_save_json = features._save_json
    saves = []

    def killed_on_third_index_write(path, data):
        saves.append(path)
        if len(saves) == 3:  # the empty index, shard 0's, then "killed" before shard 1's
            raise SystemExit("killed")
        real_save_json(path, data)

    monkeypatch.setattr(features, "_save_json", killed_on_third_index_write)
    with pytest.raises(SystemExit):
        extract(photos, tmp_path / "cache", shapes_cnn)
    monkeypatch.undo()
    folder = tmp_path / "cache" / "shapes_cnn"
    assert (folder / "shard_00001.features.npy").exists()  # written, but never indexed
    cache = FeatureCache(tmp_path / "cache", "shapes_cnn")
    assert cache.keys == photos[1][:4]
    resumed = extract(photos, tmp_path / "cache", shapes_cnn)
    assert resumed.keys == photos[1] and resumed.get("photo_9.jpg").shape == (64, 128)


def test_another_network_is_not_mixed_in(tmp_path, photos, shapes_cnn):
    extract(photos, tmp_path / "cache", shapes_cnn)
    paths, keys = photos
    other = build_backbone("shapes_cnn", weights=None)  # same label, different random weights
    with pytest.raises(ValueError, match="weights_fingerprint .* cached") as caught:
        extract_features("shapes_cnn", paths + paths[:1], keys + ["new"], tmp_path / "cache",
                         weights=None, model=other, progress=False)
    assert "must not be mixed" in str(caught.value)
    pooled = keras.Sequential([keras.Input((64, 64, 3)), keras.layers.GlobalAveragePooling2D()])
    wrong_shape = r"maps \(None, 64, 64, 3\) -> \(None, 3\), but shapes_cnn"
    with pytest.raises(ValueError, match=wrong_shape):
        extract_features("shapes_cnn", paths, keys, tmp_path / "cache", weights=None,
                         model=pooled, progress=False)


def test_settings_recorded_in_the_index_are_enforced(tmp_path, photos, shapes_cnn):
    extract(photos, tmp_path / "cache", shapes_cnn)
    index_path = tmp_path / "cache" / "shapes_cnn" / "index.json"
    index = json.loads(index_path.read_text())
    index["settings"]["input_size"] = 96  # as if made by an older, different version
    index_path.write_text(json.dumps(index))
    with pytest.raises(ValueError, match="input_size 96 cached, 64 now"):
        extract(photos, tmp_path / "cache", shapes_cnn)


def test_fully_cached_request_needs_no_network_but_checks_the_weights(tmp_path, photos,
                                                                     shapes_cnn, monkeypatch):
    extract(photos, tmp_path / "cache", shapes_cnn)
    paths, keys = photos
    monkeypatch.setattr(features, "build_backbone", lambda *args: pytest.fail("built a model"))
    cache = extract_features("shapes_cnn", paths, keys, tmp_path / "cache", weights=None,
                             progress=False)
    assert len(cache) == 10
    monkeypatch.undo()  # other weights than those cached: the network must be built and checked
    with pytest.raises(FileNotFoundError, match="weights file for shapes_cnn not found"):
        extract_features("shapes_cnn", paths, keys, tmp_path / "cache",
                         weights=tmp_path / "missing.weights.h5", progress=False)


def test_backbones_have_separate_folders(tmp_path, photos, shapes_cnn):
    extract(photos, tmp_path / "cache", shapes_cnn)
    with pytest.raises(FileNotFoundError, match="no mobilenet_v3 features cached"):
        FeatureCache(tmp_path / "cache", "mobilenet_v3")
    paths, keys = photos
    mobile = extract_features("mobilenet_v3", paths[:1], keys[:1], tmp_path / "cache",
                              weights=None, progress=False)
    assert mobile.get(keys[0]).shape == (49, 960)
    assert len(FeatureCache(tmp_path / "cache", "shapes_cnn")) == 10


def test_bad_images_raise_or_are_skipped_with_one_warning(tmp_path, photos, shapes_cnn):
    paths, keys = photos
    paths = list(paths)
    paths[2].write_bytes(b"")
    paths[7].write_text("not a picture")
    with pytest.raises(ImageError, match="photo_2.png"):
        extract(photos, tmp_path / "strict", shapes_cnn)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cache = extract(photos, tmp_path / "lenient", shapes_cnn, skip_bad=True)
    skipped = [w for w in caught if issubclass(w.category, SkippedImagesWarning)]
    assert len(skipped) == 1
    assert str(skipped[0].message).startswith("skipped 2 of 10 images")
    assert "photo_7.jpg" in str(skipped[0].message)
    assert len(cache) == 8 and "photo_2.png" not in cache and "photo_7.jpg" not in cache


def test_dataset_yields_features_in_the_given_order(tmp_path, photos, shapes_cnn):
    cache = extract(photos, tmp_path / "cache", shapes_cnn)
    order = ["photo_9.jpg", "photo_0.png", "photo_5.jpg", "photo_4.png", "photo_5.jpg"]
    singles = list(cache.dataset(order))
    assert [x.dtype for x in singles] == [tf.float16] * 5
    for key, x in zip(order, singles, strict=True):
        np.testing.assert_array_equal(x.numpy(), cache.get(key))
    batches = list(cache.dataset(order, batch_size=2))
    assert [b.shape[0] for b in batches] == [2, 2, 1]
    np.testing.assert_array_equal(np.concatenate(batches), np.stack([cache.get(k) for k in order]))


def test_shuffled_dataset_keeps_features_with_their_labels(tmp_path, photos, shapes_cnn):
    cache = extract(photos, tmp_path / "cache", shapes_cnn)
    keys = photos[1]
    dataset = cache.dataset(keys, labels=np.arange(10), batch_size=4, shuffle=True, seed=3)
    epochs = [[(x.numpy(), y.numpy()) for x, y in dataset] for _ in range(2)]
    for epoch in epochs:
        labels = np.concatenate([y for _, y in epoch])
        assert sorted(labels) == list(range(10))
        for x, y in epoch:
            np.testing.assert_array_equal(x, np.stack([cache.get(keys[i]) for i in y]))
    orders = [np.concatenate([y for _, y in epoch]).tolist() for epoch in epochs]
    assert orders[0] != orders[1] != list(range(10))  # reshuffled each epoch
    with pytest.raises(KeyError, match="1 of 2 keys are not in the feature cache"):
        cache.dataset(["photo_0.png", "unknown"])


def test_cached_features_index_like_the_array_they_stand_for(tmp_path, photos, shapes_cnn):
    from utils.features import CachedFeatures

    cache = extract(photos, tmp_path / "cache", shapes_cnn)  # shards of 4: rows span 3 shards
    keys = photos[1][::-1]
    rows = CachedFeatures(cache, keys)
    whole = np.stack([cache.get(key) for key in keys])
    assert rows.shape == whole.shape and rows.dtype == whole.dtype and len(rows) == 10
    assert rows.nbytes == whole.nbytes
    np.testing.assert_array_equal(np.asarray(rows), whole)
    np.testing.assert_array_equal(rows[3], whole[3])
    np.testing.assert_array_equal(rows[-1], whole[-1])
    np.testing.assert_array_equal(rows[2:9:3], whole[2:9:3])
    np.testing.assert_array_equal(rows[[[7, 0], [0, -2]]], whole[[[7, 0], [0, -2]]])
    for wrong in (10, -11, [0, 10], np.ones(10, bool), 1.5):
        with pytest.raises(IndexError):
            rows[wrong]
    with pytest.raises(KeyError, match="1 of 2 keys are not in the feature cache"):
        CachedFeatures(cache, ["photo_0.png", "unknown"])


def test_a_cut_short_shard_is_reported_by_name(tmp_path, photos, shapes_cnn):
    from utils.features import CachedFeatures

    cache = extract(photos, tmp_path / "cache", shapes_cnn)
    shard = cache.folder / "shard_00001.features.npy"
    shard.write_bytes(shard.read_bytes()[:-100])  # as a full disk would leave it
    rows = CachedFeatures(FeatureCache(tmp_path / "cache", "shapes_cnn"), photos[1])
    np.testing.assert_array_equal(rows[:4], np.asarray(CachedFeatures(cache, photos[1][:4])))
    with pytest.raises(ValueError, match="shard_00001.features.npy ends before row 3"):
        rows[7]
    shard.write_bytes(b"not numpy")
    with pytest.raises(ValueError, match="shard_00001.features.npy is not a readable .npy"):
        CachedFeatures(FeatureCache(tmp_path / "cache", "shapes_cnn"), photos[1])[5]


def test_the_keras_cache_folder_still_comes_from_where_keras_keeps_it():
    """utils.backbones._keras_cache_folder is the book's one use of a private Keras API
    (keras.src.backend.config.keras_home: Keras 3 has no public accessor). If a Keras release
    moves it, this test fails and names the function to update; the fallback would otherwise
    guess ~/.keras silently."""
    import os
    import pathlib

    from utils import backbones

    try:
        from keras.src.backend.config import keras_home
    except ImportError as error:
        pytest.fail(f"Keras moved keras_home ({error}): update "
                    "utils.backbones._keras_cache_folder")
    expected = pathlib.Path(os.path.expanduser(keras_home())) / "models"
    assert backbones._keras_cache_folder() == expected
