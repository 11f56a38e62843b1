import pytest

from utils.profile import get_profile


def test_names_and_defaults(monkeypatch):
    monkeypatch.delenv("BOOK_DATASET", raising=False)
    assert get_profile("smoke").dataset == "shapes"
    assert get_profile("cpu").dataset == "shapes"
    assert get_profile("gpu").dataset == "flickr8k"
    assert get_profile("gpu", dataset="shapes").dataset == "shapes"


def test_environment_chooses(monkeypatch):
    monkeypatch.setenv("BOOK_PROFILE", "smoke")
    monkeypatch.setenv("BOOK_DATASET", "coco")
    profile = get_profile()
    assert (profile.name, profile.dataset) == ("smoke", "coco")


def test_auto_is_cpu_without_gpu(monkeypatch):
    monkeypatch.setattr("utils.profile.gpu_visible", lambda: False)
    assert get_profile("auto").name == "cpu"
    monkeypatch.setattr("utils.profile.gpu_visible", lambda: True)
    assert get_profile("auto").name == "gpu"


def test_unknown_names_are_explained():
    with pytest.raises(ValueError, match="choose one of"):
        get_profile("laptop")
    with pytest.raises(ValueError, match="BOOK_DATASET"):
        get_profile("cpu", dataset="imagenet")


def test_smoke_is_smaller_than_cpu():
    smoke, cpu = get_profile("smoke"), get_profile("cpu")
    assert smoke.num_images < cpu.num_images and smoke.units < cpu.units
