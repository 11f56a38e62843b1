"""The shared package of the book *From Image Recognition to Image Understanding*.

Each module holds one concern and imports on its own; TensorFlow is imported only by the modules
that need it, so ``utils.shapes`` and ``utils.metrics`` work without it.

Chapters start with::

    import utils
    PROFILE = utils.setup()
"""
from __future__ import annotations

import importlib
import os
import re
import sys
import tempfile

__version__ = "0.1.0"

#: Where the book lives; the Colab badges and the Colab install line point here.
REPO_URL = "https://github.com/image-understanding-book/image-captioning-book"

_SUBMODULES = ("profile", "checksums", "shapes", "datasets", "download", "images", "text",
               "encoders", "backbones", "features", "attention", "decoders", "losses", "captioner",
               "model", "train", "decoding", "metrics", "viz", "evaluation", "export",
               "recognition", "apps")


def __getattr__(name: str):
    # Lazy submodules: ``utils.captioner`` imports TensorFlow only when a chapter first touches it.
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    # utils.load_captioner, utils.save_captioner, utils.ExportMismatchError live in utils.export
    return importlib.import_module(f"{__name__}.export").lazy_attribute(name)


#: The versions the book is tested with (requirements.txt pins them; a test keeps these equal).
TESTED_VERSIONS = {"tensorflow": "2.21", "keras": "3.15"}

COLAB_DATA = "/content/image-understanding-data"
COLAB_DRIVE_DATA = "/content/drive/MyDrive/image-understanding-data"


def on_colab() -> bool:
    """True inside a Google Colab runtime."""
    return "google.colab" in sys.modules


def _colab_data_folder() -> str:
    # Google Drive survives a disconnected runtime; /content does not. Use Drive when mounted.
    return COLAB_DRIVE_DATA if os.path.isdir("/content/drive/MyDrive") else COLAB_DATA


def version_warnings(installed: dict[str, str]) -> list[str]:
    """One line per package of ``installed`` whose major.minor version differs from the tested
    one (TensorFlow is left out where Keras runs on JAX or PyTorch)."""
    lines = []
    for package, tested in TESTED_VERSIONS.items():
        if package not in installed:
            continue
        have = ".".join(installed[package].split(".")[:2])
        if have != tested:
            lines.append(
                f"{package} {installed[package]} is installed; the book is tested with "
                f"{tested}.x. Most chapters still run; if one fails, install the tested version "
                f"(pip install -r requirements.txt, or on Colab keep Colab's build and report the error).")
    return lines


def set_precision(mixed: bool | str) -> str:
    """Set Keras' global dtype policy where a GPU is visible: ``"mixed_float16"`` for
    ``mixed=True``, the policy named by a string (``"mixed_bfloat16"``), ``"float32"`` for
    ``False``. Without a GPU it is always ``"float32"`` (a CPU computes float16 slower than
    float32). Returns the policy's name.

    Call it before building a model: layers take the policy that is active when they are made.
    """
    import keras

    from .profile import gpu_visible

    policy = "float32"
    if mixed and gpu_visible():
        policy = mixed if isinstance(mixed, str) else "mixed_float16"
    keras.mixed_precision.set_global_policy(policy)
    return policy


def quiet_tensorflow() -> None:
    """Keep TensorFlow's C++ log lines out of the chapters' outputs and the command line's.

    Level 3 hides its start-up notices and its harmless error-level lines too (tf.data's
    ``E0000 ... NodeDef mentions attribute use_unbounded_threadpool``, printed by ``fit`` with
    level 2); a real failure still raises a Python exception. Takes effect only before
    TensorFlow is imported; a level the reader set is kept."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


#: TensorFlow's C++ start-up notices. TensorFlow 2.21 writes them to file descriptor 2 while it is
#: imported, whatever TF_CPP_MIN_LOG_LEVEL says: absl's "All log messages before
#: absl::InitializeLog() ..." and, on a CPU with AVX-512, oneDNN's "custom operations are on".
_START_UP_NOTICE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\)"
    r"|[IW]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ (port|cpu_feature_guard)\.cc:\d+\]"
    r"|To enable the following instructions: )")


def _flush_c_streams() -> None:
    try:
        import ctypes

        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):  # no C library to ask (not a POSIX system)
        pass


def import_tensorflow():
    """``import tensorflow``, keeping its C++ start-up notices off the reader's screen.

    Python cannot filter what C++ writes to file descriptor 2, so for the import that
    descriptor points at a temporary file; afterwards every line that is not such a notice (a
    real error, say) is passed on to ``sys.stderr``. Returns the module."""
    quiet_tensorflow()
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no descriptor 2 to redirect: nothing would be shown anyway
        import tensorflow
        return tensorflow
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            import tensorflow
        finally:
            _flush_c_streams()  # what C++ wrote but its stdio still buffers goes to the file too
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            lines = capture.read().decode("utf-8", "replace").splitlines()
            kept = [line for line in lines if line.strip() and not _START_UP_NOTICE.match(line)]
            if kept:
                print("\n".join(kept), file=sys.stderr)
    return tensorflow


def setup(profile: str | None = None, seed: int = 42, deterministic: bool = True):
    """Prepare a chapter: seed everything, make TensorFlow deterministic, print versions.

    On Keras' JAX or PyTorch backend (``KERAS_BACKEND``) TensorFlow is not needed: the versions
    line names that backend and its devices, and only the seeds are set.

    Returns the active :class:`utils.profile.Profile` (from ``profile`` or ``BOOK_PROFILE``).
    On Colab, datasets go to Google Drive when it is mounted, else under ``/content``; a missing
    GPU and versions other than the tested ones are reported, with what to do.
    Fails with a message that says what to do when a pinned package is missing.
    """
    quiet_tensorflow()
    if on_colab():
        os.environ.setdefault("BOOK_DATA", _colab_data_folder())
    try:
        import numpy as np  # noqa: F401
        try:
            import_tensorflow()  # quietly, before Keras imports it
        except ModuleNotFoundError as error:  # fine on KERAS_BACKEND=jax or torch
            if error.name != "tensorflow":
                raise
        import keras  # on the default backend, fails here without TensorFlow
    except ImportError as error:  # pragma: no cover - depends on the reader's machine
        other_backends = (" Without TensorFlow, KERAS_BACKEND=jax or torch runs the model, "
                          "its training and the command line; the chapters are run on TensorFlow."
                          if error.name == "tensorflow" else "")
        raise RuntimeError(
            f"{error.name} is not installed. Locally run `make book` (it builds .venv/), "
            "or `pip install -r requirements.txt -e .`; on Colab re-run the Setup cell."
            + other_backends
        ) from error
    from .profile import get_profile, gpu_visible

    active = get_profile(profile)
    backend = keras.backend.backend()
    keras.utils.set_random_seed(seed)
    if backend == "tensorflow":
        tf = sys.modules["tensorflow"]
        # Chapters deliberately compile a few graph variants (batch sizes, beam widths);
        # TensorFlow's "retracing" advice about that would only distract. Errors are shown.
        tf.get_logger().setLevel("ERROR")
        if deterministic:
            tf.config.experimental.enable_op_determinism()
        devices = ", ".join(d.device_type for d in tf.config.list_physical_devices()) or "none"
        versions = {"tensorflow": tf.__version__, "keras": keras.__version__}
        name = f"TensorFlow {tf.__version__}"
    else:
        package = importlib.import_module(backend)  # jax or torch
        devices = "CPU, GPU" if gpu_visible() else "CPU"
        versions = {"keras": keras.__version__}
        name = f"Keras backend {backend} {package.__version__}"
    print(
        f"Python {sys.version.split()[0]} | {name} | Keras {keras.__version__}"
        f" | devices: {devices}"
    )
    print(f"profile: {active.name} | dataset: {active.dataset} | seed: {seed}")
    precision = set_precision(active.mixed_precision)
    if precision != "float32":
        arithmetic = precision.removeprefix("mixed_")
        print(f"precision: {precision} ({arithmetic} arithmetic, float32 weights and losses)")
    for line in version_warnings(versions):
        print("warning:", line)
    if on_colab():
        print(f"data folder: {os.environ['BOOK_DATA']}")
        if not gpu_visible():
            print("warning: no GPU in this Colab runtime, so training uses the slower cpu profile. "
                  "For a GPU: Runtime > Change runtime type > GPU, then run the notebook again.")
    return active
