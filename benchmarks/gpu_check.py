"""One prepared GPU check: train, evaluate and time the book's captioner on a GPU, with whichever
of Keras' three backends the machine has (``KERAS_BACKEND``: tensorflow, jax or torch).

    KERAS_BACKEND=jax python -m benchmarks.gpu_check     # on a GPU machine (meant: < 8 minutes)
    python -m benchmarks.gpu_check --quick --out F.json  # tiny sizes, any machine: a minute

Five steps, each timed:

1. **shapes**: the ``gpu`` profile's Shapes dataset (30,000 images), generated on the CPU;
2. **training**: the ``gpu`` profile's captioner trained by ``utils.train.fit`` for at most
   ``--train-minutes`` (the epoch that passes the limit is finished), with the time at which the
   validation exact-caption rate first reached :data:`EXACT_GOAL`;
3. **test**: the trained model scored on the test split;
4. **training speed** at the tutorial's sizes (:data:`SIZES`: InceptionV3 features 64x2048, an
   LSTM of 512 with additive attention, 8,000 words, captions of up to 20 words) in float32,
   ``mixed_float16`` and ``mixed_bfloat16``: milliseconds per step and real (not padding)
   tokens per second;
5. **decoding speed** at the same sizes: batched greedy and beam-3 captions per second.

It writes ``benchmarks/results/gpu-<device>-<backend>.json``; ``python -m benchmarks
--update-readme`` turns every such file into the GPU table of benchmarks/README.md, which also
says how to run this with no more than a bare GPU image and Keras.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import pathlib
import platform
import re
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np

from .suite import SIZES as SUITE_SIZES
from .suite import Sizes, build_fast, random_captions, random_inputs

HERE = pathlib.Path(__file__).resolve().parent
RESULTS = HERE / "results"

#: The tutorial's model at the sizes the issue asked for: features 64x2048 projected to 256, an
#: LSTM of 512 units, additive attention of 512, 8,000 words; captions of up to 20 words.
SIZES = Sizes("tutorial-8k", "features", vocab=8000, batch=256, positions=22, words_mean=11,
              words_sd=4, region_dim=256, embed_dim=256, units=512, attention_units=512,
              decode_words=20)
POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")
#: (policy, batch) pairs timed; each costs a compile of the training step.
SPEED_RUNS = (("float32", 64), ("float32", 256), ("mixed_float16", 256),
              ("mixed_bfloat16", 256))
EXACT_GOAL = 0.95  # the gpu profile's Shapes captioner, within TRAIN_GOAL_SECONDS
TRAIN_GOAL_SECONDS = 180
TOKENS_GOAL = 100_000  # training tokens per second, best backend and dtype


@dataclasses.dataclass(frozen=True)
class Plan:
    """How much the check does: the real one, or ``--quick`` (tiny, any machine)."""

    profile: str
    sizes: Sizes
    speed_runs: tuple[tuple[str, int], ...]
    warmup_steps: int
    timed_steps: int
    decode_repeats: int
    test_images: int | None  # None: the whole test split


FULL = Plan("gpu", SIZES, SPEED_RUNS, warmup_steps=3, timed_steps=20, decode_repeats=3,
            test_images=None)
QUICK = Plan("smoke", SUITE_SIZES["tiny"], tuple((policy, 8) for policy in POLICIES),
             warmup_steps=1, timed_steps=2, decode_repeats=1, test_images=16)


def backend_and_device() -> tuple[str, str]:
    """Keras' backend, and the name of the GPU it computes on (``"cpu"`` without one)."""
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        device = jax.devices()[0]
        return backend, device.device_kind if device.platform == "gpu" else "cpu"
    if backend == "torch":
        import torch

        return backend, torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return backend, "cpu"
    return backend, tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU")


def slug(name: str) -> str:
    """``"NVIDIA H200"`` -> ``"nvidia-h200"``: the device's part of the results file name."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def machine_info(backend: str, device: str) -> dict:
    import keras

    versions = {"keras": keras.__version__, "numpy": np.__version__}
    package = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}[backend]
    versions[package] = __import__(package).__version__
    return {"backend": backend, "device": device, "cpus": os.cpu_count(),
            "python": platform.python_version(), "platform": platform.platform(), **versions}


# --- steps 1 to 3: the gpu profile on Shapes ---------------------------------------------------


def time_limit_callback(seconds: float, goal: float):
    """A callback that stops ``fit`` after the first epoch that ends past ``seconds`` and keeps,
    per epoch, the time since training began and the logs (``.epochs``), and the time at which
    ``val_exact`` first reached ``goal`` (``.reached``, else ``None``)."""
    import keras

    class TimeLimit(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.epochs, self.reached, self.start = [], None, 0.0

        def on_train_begin(self, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            elapsed = time.perf_counter() - self.start
            logs = dict(logs or {})
            self.epochs.append({"epoch": epoch + 1, "seconds": round(elapsed, 1),
                                **{k: round(float(v), 4) for k, v in logs.items()
                                   if k in ("loss", "val_loss", "val_exact", "val_bleu4")}})
            if self.reached is None and logs.get("val_exact", 0.0) >= goal:
                self.reached = round(elapsed, 1)
            if elapsed > seconds:
                self.model.stop_training = True

    return TimeLimit()


def shapes_run(plan: Plan, train_minutes: float, log) -> dict:
    """Generate Shapes, train the plan's profile on it for at most ``train_minutes``, score the
    test split."""
    from utils import evaluation, train
    from utils.captioner import captioner_from_profile
    from utils.profile import get_profile

    profile = get_profile(plan.profile, dataset="shapes")
    started = time.perf_counter()
    vocabulary, splits = train.prepare_shapes(profile)
    data_seconds = time.perf_counter() - started
    log(f"shapes: {profile.num_images:,} images in {data_seconds:.0f} s")
    run_dir = pathlib.Path(tempfile.mkdtemp(prefix="gpu-check-run-"))
    try:
        model = captioner_from_profile(profile, len(vocabulary))
        limit = time_limit_callback(train_minutes * 60, EXACT_GOAL)
        train.fit(model, splits["train"], splits["val"], vocabulary, profile, run_dir,
                  verbose=0, callbacks=[limit])
        started = time.perf_counter()
        scored = evaluation.score_split(model, splits["test"], vocabulary,
                                        profile.max_caption_tokens + 1, count=plan.test_images,
                                        metrics=["Bleu_4", "CIDEr"])
        test_seconds = time.perf_counter() - started
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    report = scored.report
    log(f"training: {len(limit.epochs)} epochs in {limit.epochs[-1]['seconds']:.0f} s; "
        f"val_exact reached {EXACT_GOAL} at {limit.reached} s; test exact {report['exact']:.3f}")
    return {"profile": profile.name, "images": profile.num_images,
            "batch_size": profile.batch_size, "data_seconds": round(data_seconds, 1),
            "epochs": limit.epochs, "goal_reached_seconds": limit.reached,
            "test": {"images": len(scored.captions), "exact": report["exact"],
                     "Bleu_4": report["Bleu_4"], "CIDEr": report["CIDEr"],
                     "seconds": round(test_seconds, 1)}}


# --- steps 4 and 5: speed at the tutorial's sizes ----------------------------------------------


def training_speed(sizes: Sizes, policy: str, batch: int, warmup: int, steps: int) -> dict:
    """Milliseconds per training step and real tokens per second of the book's captioner at
    ``sizes`` under the dtype ``policy``, on four batches of random captions (kept on the
    device) taken in turn. Each step waits for its result, so the time is the step's own."""
    import keras

    sizes = dataclasses.replace(sizes, batch=batch)
    keras.mixed_precision.set_global_policy(policy)
    try:
        keras.utils.set_random_seed(0)
        model = build_fast(sizes)
        rng = np.random.default_rng(1)
        batches = [(random_inputs(sizes, rng, batch), random_captions(sizes, rng, batch))
                   for _ in range(4)]
        real_tokens = np.mean([(captions[:, 1:] != 0).sum() for _, captions in batches])
        batches = [(keras.ops.convert_to_tensor(x), keras.ops.convert_to_tensor(c))
                   for x, c in batches]
        for step in range(warmup):
            model.train_on_batch(*batches[step % 4])
        started = time.perf_counter()
        for step in range(steps):
            model.train_on_batch(*batches[step % 4])  # returns NumPy logs: waits for the step
        seconds = (time.perf_counter() - started) / steps
    finally:
        keras.mixed_precision.set_global_policy("float32")
    return {"policy": policy, "batch": batch, "ms_per_step": round(1000 * seconds, 2),
            "real_tokens_per_second": round(real_tokens / seconds),
            "padded_tokens_per_second": round(batch * (sizes.positions - 1) / seconds)}


def decoding_speed(sizes: Sizes, repeats: int) -> list[dict]:
    """Captions per second of batched greedy and beam-3 search over ``sizes.batch`` images,
    float32, the first (compiling) call left out."""
    import keras

    from utils.decoding import decode_images

    keras.utils.set_random_seed(0)
    model = build_fast(sizes)
    images = keras.ops.convert_to_tensor(
        random_inputs(sizes, np.random.default_rng(2), sizes.batch))
    results = []
    for beam in (1, 3):
        def search():
            result = decode_images(model, images, max_length=sizes.decode_words,
                                   beam_size=beam)
            keras.ops.convert_to_numpy(result.sequences)  # wait for it

        search()
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            search()
            times.append(time.perf_counter() - started)
        seconds = statistics.median(times)
        results.append({"search": "greedy" if beam == 1 else f"beam {beam}",
                        "images": sizes.batch, "seconds": round(seconds, 4),
                        "captions_per_second": round(sizes.batch / seconds)})
    return results


def speed_runs(plan: Plan, log) -> tuple[list[dict], list[dict]]:
    training = []
    for policy, batch in plan.speed_runs:
        try:
            result = training_speed(plan.sizes, policy, batch, plan.warmup_steps,
                                    plan.timed_steps)
        except Exception as error:  # a policy this backend or device cannot run: say so
            result = {"policy": policy, "batch": batch,
                      "error": " ".join(f"{type(error).__name__}: {error}".split())[:300]}
        training.append(result)
        log(f"training speed: {result}")
    decoding = decoding_speed(plan.sizes, plan.decode_repeats)
    log(f"decoding speed: {decoding}")
    return training, decoding


def goals(shapes: dict, training: list[dict]) -> dict:
    timed = [run for run in training if "real_tokens_per_second" in run]
    best = max(timed, key=lambda run: run["real_tokens_per_second"]) if timed else None
    return {
        "tokens_per_second": {
            "goal": TOKENS_GOAL, "best": best,
            "met": bool(best and best["real_tokens_per_second"] >= TOKENS_GOAL)},
        "exact_within_3_minutes": {
            "goal": EXACT_GOAL, "seconds": TRAIN_GOAL_SECONDS,
            "reached_seconds": shapes["goal_reached_seconds"],
            "met": (shapes["goal_reached_seconds"] is not None
                    and shapes["goal_reached_seconds"] <= TRAIN_GOAL_SECONDS)},
    }


def run_check(plan: Plan, train_minutes: float, log=print) -> dict:
    backend, device = backend_and_device()
    log(f"backend {backend}, device {device}")
    started = time.perf_counter()
    shapes = shapes_run(plan, train_minutes, log)
    training, decoding = speed_runs(plan, log)
    return {"run": {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(
                        timespec="seconds"),
                    "plan": plan.profile, "sizes": plan.sizes.describe(),
                    "seconds": round(time.perf_counter() - started, 1),
                    **machine_info(backend, device)},
            "shapes": shapes, "training": training, "decoding": decoding,
            "goals": goals(shapes, training)}


# --- the README's table ------------------------------------------------------------------------


def stored() -> list[pathlib.Path]:
    return sorted(RESULTS.glob("gpu-*.json"))


def render(paths) -> str:
    """The GPU table of benchmarks/README.md: one row per stored ``gpu-*.json``."""
    reports = [json.loads(pathlib.Path(path).read_text()) for path in paths]
    if not reports:
        return ("No GPU result is stored yet: no GPU was available to the builds so far. Run "
                "`python -m benchmarks.gpu_check` on a GPU machine (below) and commit the file "
                "it writes.\n")
    lines = ["| device | backend | training, ms/step (batch 256): float32 / mixed_float16 / "
             "mixed_bfloat16 | best real tokens/s | greedy / beam 3 captions/s | gpu profile: "
             "val exact 0.95 reached | test exact | date |",
             "|---|---|---|---:|---:|---:|---:|---|"]
    for report in reports:
        by_policy = {(run["policy"], run["batch"]): run for run in report["training"]}
        steps = " / ".join(
            f"{by_policy[(policy, 256)]['ms_per_step']:.1f}"
            if "ms_per_step" in by_policy.get((policy, 256), {}) else "—"
            for policy in POLICIES)
        best = report["goals"]["tokens_per_second"]["best"]
        best_text = (f"{best['real_tokens_per_second']:,} ({best['policy']}, batch "
                     f"{best['batch']})" if best else "—")
        decoding = " / ".join(f"{run['captions_per_second']:,}" for run in report["decoding"])
        reached = report["shapes"]["goal_reached_seconds"]
        run = report["run"]
        lines.append(
            f"| {run['device']} | {run['backend']} {run[run['backend']]} | {steps} | "
            f"{best_text} | {decoding} | "
            f"{'not within the run' if reached is None else f'{reached:.0f} s'} | "
            f"{report['shapes']['test']['exact']:.3f} | {run['date'][:10]} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes and the smoke profile: about a minute, on any machine")
    parser.add_argument("--out", type=pathlib.Path,
                        help="results file (default: benchmarks/results/gpu-DEVICE-BACKEND.json)")
    parser.add_argument("--train-minutes", type=float, default=3.0,
                        help="stop training after the epoch that ends past this (default 3)")
    args = parser.parse_args(argv)
    try:
        backend, device = backend_and_device()
    except ModuleNotFoundError as error:  # Keras' default backend, TensorFlow, is not installed
        print(f"Keras cannot load its backend ({error}): set KERAS_BACKEND=jax or "
              f"KERAS_BACKEND=torch (now {os.environ.get('KERAS_BACKEND', 'unset')})",
              file=sys.stderr)
        return 2
    if device == "cpu" and not args.quick:
        print(f"the {backend} backend sees no GPU: this check is for GPU machines "
              "(--quick runs it at tiny sizes anywhere)", file=sys.stderr)
        return 2
    if args.quick and args.out is None:
        print("--quick needs --out: its figures are not a GPU's and do not belong in "
              "benchmarks/results/", file=sys.stderr)
        return 2
    out = args.out or RESULTS / f"gpu-{slug(device)}-{backend}.json"
    report = run_check(QUICK if args.quick else FULL, args.train_minutes)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out} ({report['run']['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
