"""Self-critical sequence training on Shapes (chapter 6, section 6.10): the two rewards, each from
chapter 5's captioner, over several seeds of the self-critical stage.

    python -m benchmarks.scst [--profile cpu] [--seeds 0 1] [--out benchmarks/results/scst-cpu.json]

The cross-entropy model is the one chapter 5 trains (``runs/05_implementation-<profile>``,
trained now if missing). Each stage is :func:`utils.scst.run_or_load` (seed 0 is the chapter's own
stage, loaded when the chapter ran); greedy captions of the test and test_novel splits are scored
by :func:`benchmarks.decoders.score`, with how often they state a relation and how many of those
are true. The report holds every seed and the median over seeds of the headline figures.
"""
from __future__ import annotations

import argparse
import pathlib
import statistics

import utils
from utils import scst, train

from .decoders import score, write_report
from .results_table import headline

#: The rewards of chapter 6: CIDEr-D alone, and with the truth and discrimination terms.
REWARDS = {"cider": {"truth": 0.0, "discrimination": 0.0}, "told": scst.TOLD_REWARD}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--out", type=pathlib.Path)
    args = parser.parse_args()
    profile = utils.setup(args.profile)
    out = args.out or pathlib.Path(f"benchmarks/results/scst-{profile.name}.json")
    max_words = profile.max_caption_tokens + 1
    model, vocabulary, splits = train.train_or_load(profile, verbose=0)

    def scored(captioner) -> dict:
        return {name: score(captioner, splits[name], vocabulary, max_words)
                for name in ("test", "test_novel")}

    evaluated = scored(model)
    results = {"cross-entropy": {"headline": headline(evaluated), **evaluated}}
    for reward, weights in REWARDS.items():
        runs = {}
        for seed in args.seeds:
            name = reward if seed == 0 else f"{reward}-seed{seed}"
            tuned, history = scst.run_or_load(profile, name, seed=seed, verbose=False, **weights)
            evaluated = scored(tuned)
            runs[f"seed {seed}"] = {"stage_minutes": round(history[-1]["seconds"] / 60, 2),
                                    "headline": headline(evaluated), "history": history,
                                    **evaluated}
            print(reward, seed, runs[f"seed {seed}"]["headline"], flush=True)
        median = {key: statistics.median(run["headline"][key] for run in runs.values())
                  for key in results["cross-entropy"]["headline"]}
        results[f"scst, {reward}"] = {"reward": weights, "median": median, **runs}
    write_report(out, "scst", profile.name, results)


if __name__ == "__main__":
    main()
