"""Batches grouped by caption length vs random batches, for the Shapes CNN captioner.

    python -m benchmarks.grouping [--profile cpu] [--reuse] [--out benchmarks/results/grouping-cpu.json]

Grouping by length saves decoder steps (every batch is trimmed to its longest caption), but on
Shapes a caption's length says how many objects the scene holds, so a grouped batch holds one
kind of scene, and the CNN's batch normalisation, which uses each training batch's statistics,
learns from that. This trains the profile's soft-attention captioner twice with the same seed,
``group_by_length`` on and off, and stores each run's per-epoch history, its decoder steps per
batch and its test scores. ``--reuse`` scores runs a previous invocation finished.
"""
from __future__ import annotations

import argparse
import pathlib
import time

import numpy as np

import utils
from benchmarks.decoders import write_report
from utils import datasets, evaluation, train
from utils.captioner import captioner_from_profile, trimmed_steps


def mean_steps(split, profile, grouped: bool) -> float:
    """Decoder steps per training batch over one epoch of ``train.training_pipeline``."""
    batches = len(split) // profile.batch_size
    pipeline = train.training_pipeline(split, profile.batch_size,
                                       group_by_length=grouped).take(batches)
    return float(np.mean([trimmed_steps(captions) for _, captions in pipeline]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--out", type=pathlib.Path)
    parser.add_argument("--reuse", action="store_true",
                        help="score finished runs again instead of retraining them")
    args = parser.parse_args()
    profile = utils.setup(args.profile)
    out = args.out or pathlib.Path(f"benchmarks/results/grouping-{profile.name}.json")
    vocabulary, splits = train.prepare_shapes(profile)
    test = splits["test"]
    results = {}
    for grouped in (False, True):
        name = "grouped by length" if grouped else "random batches"
        utils.setup(args.profile)  # the same seed for both
        run_profile = profile.replace(group_by_length=grouped)
        model = captioner_from_profile(run_profile, len(vocabulary))
        run_dir = datasets.data_root() / "runs" / f"grouping-{int(grouped)}-{profile.name}"
        started = time.perf_counter()
        if args.reuse and (run_dir / train.RUN_INFO).exists():
            model((test.pixels[:1], test.captions[:1, 0, :-1]))
            model.load_weights(run_dir / "best.weights.h5")
            minutes = None
        else:
            train.fit(model, splits["train"], splits["val"], vocabulary, run_profile, run_dir,
                      verbose=2)
            minutes = round((time.perf_counter() - started) / 60, 2)
        report = evaluation.score_split(model, test, vocabulary, profile.max_caption_tokens + 1,
                                        metrics=["CIDEr"]).report
        rates = report["by_scene"]
        results[name] = {
            "group_by_length": grouped, "training_minutes": minutes,
            "decoder_steps_per_batch": mean_steps(splits["train"], profile, grouped),
            "history": train.read_history(run_dir),
            "test_exact": rates["all"]["exact"], "test_correct": rates["all"]["correct"],
            "test_exact_by_objects": {key: rates[key]["exact"] for key in
                                      ("1 object", "2 objects", "3 objects") if key in rates},
            "test_informativeness": report["informativeness"]}
        print(name, {k: results[name][k] for k in ("decoder_steps_per_batch", "test_exact")})
    write_report(out, "grouping", profile.name, results)


if __name__ == "__main__":
    main()
