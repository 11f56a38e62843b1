"""Soft attention vs Show and Tell (the mean region or the whole grid as its first input) vs hard
attention on Shapes, trained alike.

    python -m benchmarks.decoders [--profile cpu] [--out benchmarks/results/decoders-cpu.json]

Each decoder is trained with the profile's settings (train.fit, best epoch by validation exact
rate; its validation curves are kept), then greedy captions of the test and test_novel splits
are scored, and the model is asked
which of a true relation caption and its mirror image ("left of" <-> "right of") is more likely
(train.relation_preference). Results go to a JSON file with the machine, the versions and the date.
``--reuse`` scores the runs a previous invocation finished instead of training them again (their
training time is taken from the previous results file).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import time

import utils
from utils import datasets, evaluation, train
from utils.captioner import captioner_from_profile

DECODERS = ("soft", "show_and_tell", "show_and_tell_grid", "hard")


def score(model, split, vocabulary, max_words: int) -> dict:
    """The report of :func:`utils.evaluation.score_split` (greedy captions), and which of a true
    relation caption and its mirror image the model prefers."""
    report = evaluation.score_split(model, split, vocabulary, max_words,
                                    metrics=["Bleu", "ROUGE_L", "CIDEr"]).report
    return {**report, "relations": train.relation_preference(model, split, vocabulary)}


def write_report(out: pathlib.Path, benchmark: str, profile: str, results: dict) -> None:
    """Write ``results`` to ``out`` as JSON, with the machine, the versions and the date."""
    import tensorflow as tf

    report = {"benchmark": benchmark, "profile": profile, "results": results,
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                          "python": platform.python_version(), "tensorflow": tf.__version__},
              "date": datetime.date.today().isoformat()}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print("wrote", out)


def _previous_minutes(path: pathlib.Path, decoder: str) -> float | None:
    """The training time a previous results file recorded for ``decoder``, if any."""
    try:
        return json.loads(path.read_text())["results"][decoder]["training_minutes"]
    except (OSError, ValueError, KeyError):
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--decoders", nargs="+", default=list(DECODERS), choices=DECODERS)
    parser.add_argument("--out", type=pathlib.Path)
    parser.add_argument("--reuse", action="store_true",
                        help="score finished runs again instead of retraining them")
    args = parser.parse_args()
    profile = utils.setup(args.profile)
    out = args.out or pathlib.Path(f"benchmarks/results/decoders-{profile.name}.json")
    vocabulary, splits = train.prepare_shapes(profile)
    max_words = profile.max_caption_tokens + 1
    results = {}
    for decoder in args.decoders:
        utils.setup(args.profile)  # the same seed for every decoder
        model = captioner_from_profile(profile, len(vocabulary), decoder=decoder)
        run_dir = datasets.data_root() / "runs" / f"bench-{decoder}-{profile.name}"
        previous = _previous_minutes(out, decoder) if args.reuse else None
        if previous is not None and (run_dir / train.RUN_INFO).exists():
            model((splits["train"].pixels[:1], splits["train"].captions[:1, 0, :-1]))
            model.load_weights(run_dir / "best.weights.h5")
            minutes = previous
        else:
            started = time.perf_counter()
            train.fit(model, splits["train"], splits["val"], vocabulary, profile, run_dir,
                      verbose=2)
            minutes = (time.perf_counter() - started) / 60
        history = train.read_history(run_dir)
        results[decoder] = {"training_minutes": round(minutes, 2), "epochs": profile.epochs,
                            "batch_size": profile.batch_size,
                            # the learning curves: validation exact rate and loss per epoch
                            "val_exact": history["val_exact"], "val_loss": history["val_loss"],
                            **{name: score(model, splits[name], vocabulary, max_words)
                               for name in ("test", "test_novel")}}
        print(decoder, json.dumps({k: results[decoder]["test"][k]
                                   for k in ("Bleu_4", "CIDEr", "exact")}), f"{minutes:.1f} min")
    write_report(out, "decoders", profile.name, results)


if __name__ == "__main__":
    main()
