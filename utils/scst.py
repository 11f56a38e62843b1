"""Self-critical sequence training (Rennie et al., 2017): after cross-entropy, the captioner is
trained on a reward given to whole captions, with the reward of its own greedy caption as the
baseline.

Built in chapter 6 (section "6.10 Training on whole captions: self-critical sequence training").
The code between a ``# >>>`` and a ``# <<<`` line is that chapter's cell, copied here by
``make code`` (``book/chapter_code.py``): edit the chapter, not these lines.
``tests/test_chapter_code.py`` keeps the two equal.

Shapes: ``B`` images, ``K`` samples per image, ``L`` words per caption.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import time

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from . import evaluation, metrics, shapes, train
from .captioner import caption_log_likelihood
from .decoding import decode_images


# >>> chapters/06_evaluation.ipynb, A reward for the caption the model writes: edit it there, then `make code`
def half_turn(scene):
    """The same objects turned half a turn about the image's centre: every
    "left of" becomes "right of" and every "above" "below", while what
    each object is stays the same."""
    size = scene["image_size"]
    turned = [
        {**obj, "bbox": [size - obj["bbox"][i] for i in (2, 3, 0, 1)]}
        for obj in scene["objects"]
    ]
    return {**scene, "objects": turned}


class CaptionReward:
    """What each caption earns: CIDEr-D against its image's references
    (document frequencies of ``references``, one list of raw captions per
    image), plus, when ``scenes`` are known (Shapes), ``truth`` if the
    caption is exact and ``discrimination`` more if it is also false for the
    scene turned half a turn. Call it with ``captions`` (text) and the index
    of each caption's image; it returns the total ``[N]`` and its parts."""

    def __init__(
        self, references, scenes=None, truth=0.0, discrimination=0.0
    ):
        self.scorer = metrics.CiderDScorer(
            [metrics.ptb_tokenize_batch(refs) for refs in references]
        )
        self.scenes = scenes
        self.truth, self.discrimination = truth, discrimination

    def __call__(self, captions, images):
        words = metrics.ptb_tokenize_batch(captions)
        parts = {
            "cider": np.array(
                [self.scorer(w, i) for w, i in zip(words, images)]
            ),
            "exact": np.zeros(len(captions)),
            "discriminative": np.zeros(len(captions)),
        }
        if self.scenes is not None:
            for n, (caption, i) in enumerate(zip(captions, images)):
                scene = self.scenes[i]
                if shapes.check_caption(caption, scene).exact:
                    parts["exact"][n] = 1.0
                    turned = half_turn(scene)
                    still = shapes.check_caption(caption, turned).correct
                    parts["discriminative"][n] = float(not still)
        total = (
            parts["cider"]
            + self.truth * parts["exact"]
            + self.discrimination * parts["discriminative"]
        )
        return total, parts
# <<< chapters/06_evaluation.ipynb


# >>> chapters/06_evaluation.ipynb, A reward for the caption the model writes: edit it there, then `make code`
def self_critical_step(
    model,
    optimizer,
    reward,
    images,
    image_ids,
    vocabulary,
    *,
    max_length,
    samples=4,
    seed=0,
):
    """One SCST update on ``images [B, ...]`` whose captions ``reward``
    scores against the references of ``image_ids int[B]``. Returns the mean
    reward of the samples and of the greedy captions, the mean of each part
    of the samples' reward, and the loss."""
    greedy = decode_images(model, images, max_length=max_length)
    drawn = decode_images(
        model,
        images,
        max_length=max_length,
        method="sample",
        num_samples=samples,
        seed=seed,
    )
    # [B * K, L]: the K samples of each image in consecutive rows
    sequences = ops.convert_to_numpy(drawn.sequences).reshape(-1, max_length)
    greedy_texts = [
        vocabulary.decode(row)
        for row in ops.convert_to_numpy(greedy.sequences[:, 0])
    ]
    baseline, _ = reward(greedy_texts, image_ids)
    sampled, parts = reward(
        [vocabulary.decode(row) for row in sequences],
        np.repeat(image_ids, samples),
    )
    advantage = sampled - np.repeat(baseline, samples)
    starts = np.full((len(sequences), 1), model.start_id, "int32")
    captions = np.concatenate([starts, sequences], axis=1)
    with tf.GradientTape() as tape:
        log_p = caption_log_likelihood(
            model, np.repeat(images, samples, axis=0), captions
        )
        loss = -ops.mean(ops.convert_to_tensor(advantage, "float32") * log_p)
    variables = model.trainable_variables
    optimizer.apply(tape.gradient(loss, variables), variables)
    return {
        "reward": float(sampled.mean()),
        "greedy reward": float(baseline.mean()),
        **{name: float(part.mean()) for name, part in parts.items()},
        "loss": float(loss),
    }
# <<< chapters/06_evaluation.ipynb


# >>> chapters/06_evaluation.ipynb, A reward for the caption the model writes: edit it there, then `make code`
@dataclasses.dataclass(frozen=True)
class SelfCriticalSettings:
    """The sizes of a self-critical stage."""

    steps: int
    batch_size: int
    samples: int  # captions drawn per image
    learning_rate: float
    eval_every: int  # steps between two evaluations
    eval_images: int  # validation images captioned at each


#: Per profile (``utils.profile``).
SETTINGS = {
    "smoke": SelfCriticalSettings(4, 8, 2, 1e-4, 2, 16),
    "cpu": SelfCriticalSettings(120, 64, 4, 2e-4, 20, 200),
    # not yet run on a GPU: scaled from "cpu", untuned
    "gpu": SelfCriticalSettings(3000, 64, 5, 5e-5, 250, 1000),
}
#: The weights of the truth and discrimination terms in the "told" reward.
TOLD_REWARD = {"truth": 1.0, "discrimination": 5.0}


def greedy_scores(model, split, vocabulary, max_length, count):
    """CIDEr-D of greedy captions of the first ``count`` images of
    ``split`` and, with known scenes, their exact rate and how often they
    state a relation (:func:`utils.evaluation.informativeness`)."""
    scored = evaluation.score_split(
        model, split, vocabulary, max_length, count=count, metrics=["CIDEr"]
    ).report
    row = {"val cider": scored["CIDEr"]}
    if split.scenes is None:
        return row
    row["val exact"] = scored["exact"]
    return {**row, **evaluation.relation_summary(scored["informativeness"])}


def train_self_critical(
    model,
    train_split,
    val_split,
    vocabulary,
    reward,
    settings,
    *,
    max_length,
    run_dir=None,
    seed=0,
    verbose=True,
):
    """Self-critical training of ``model`` in place. Returns the history:
    one row per evaluation (step 0 is the model as it came)."""
    optimizer = keras.optimizers.Adam(settings.learning_rate)
    optimizer.build(model.trainable_variables)
    identity = run_identity(model, settings, reward)
    history = load_progress(model, optimizer, run_dir, identity)
    if not history:
        history = [
            {
                "step": 0,
                "seconds": 0.0,
                **greedy_scores(
                    model,
                    val_split,
                    vocabulary,
                    max_length,
                    settings.eval_images,
                ),
            }
        ]
    step, seconds, since = history[-1]["step"], history[-1]["seconds"], []
    while step < settings.steps:
        started = time.perf_counter()
        # drawn from the step number: a resumed run draws the same batches
        ids = np.random.default_rng([seed, step]).choice(
            len(train_split), settings.batch_size, replace=False
        )
        since.append(
            self_critical_step(
                model,
                optimizer,
                reward,
                train_split.pixels[ids],
                ids,
                vocabulary,
                max_length=max_length,
                samples=settings.samples,
                seed=seed * 100_003 + step,
            )
        )
        step += 1
        seconds += time.perf_counter() - started
        if step % settings.eval_every and step < settings.steps:
            continue
        row = {"step": step, "seconds": seconds}
        row.update(
            {k: float(np.mean([s[k] for s in since])) for k in since[0]}
        )
        row.update(
            greedy_scores(
                model,
                val_split,
                vocabulary,
                max_length,
                settings.eval_images,
            )
        )
        history.append(row)
        since = []
        save_progress(model, optimizer, run_dir, identity, history)
        if verbose:
            print(
                ", ".join(
                    f"{k} {v:.3g}" for k, v in row.items() if k != "loss"
                )
            )
    return history
# <<< chapters/06_evaluation.ipynb


# The bookkeeping of train_self_critical: what a run directory holds.

#: The commit point of a run directory, written last: the history and the files it names.
PROGRESS = "progress.json"


def run_identity(model, settings, reward) -> dict:
    """What a stored run must match to be continued: the settings, the reward's weights and a
    fingerprint of the model the stage starts from (the sum of its weights' absolute values,
    which changes when any weight does)."""
    fingerprint = sum(float(np.abs(ops.convert_to_numpy(w)).sum()) for w in model.weights)
    return {"settings": dataclasses.asdict(settings), "truth": reward.truth,
            "discrimination": reward.discrimination, "start": round(fingerprint, 2)}


def save_progress(model, optimizer, run_dir, identity, history) -> None:
    """Keep the model, the optimiser's state and ``history`` in ``run_dir`` (nothing without
    one). Weights and optimiser go to new files named by the step; then ``progress.json`` is
    replaced whole (written aside, then renamed) to name them, so an interruption at any point
    leaves the last complete evaluation's files and history."""
    if run_dir is None:
        return
    run_dir = pathlib.Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    step = history[-1]["step"]
    weights, state = f"step-{step:06d}.weights.h5", f"step-{step:06d}.optimizer.npz"
    model.save_weights(run_dir / weights)
    np.savez(run_dir / state, *[ops.convert_to_numpy(v) for v in optimizer.variables])
    progress = {**identity, "weights": weights, "optimizer": state, "history": history}
    partial = run_dir / f".{PROGRESS}.partial"
    partial.write_text(json.dumps(progress, indent=1))
    os.replace(partial, run_dir / PROGRESS)
    for old in run_dir.glob("step-*"):
        if old.name not in (weights, state):
            old.unlink()


def load_progress(model, optimizer, run_dir, identity) -> list[dict]:
    """The history of the run kept in ``run_dir``, with the model and the optimiser set to where
    it stopped; ``[]``, with both untouched, when there is none, when it does not match
    ``identity`` (other settings, another reward, another starting model) or when its files
    cannot be read. The last two cases say so."""
    if run_dir is None or not (pathlib.Path(run_dir) / PROGRESS).exists():
        return []
    run_dir = pathlib.Path(run_dir)
    before = [ops.convert_to_numpy(v) for v in (*model.weights, *optimizer.variables)]
    try:
        progress = json.loads((run_dir / PROGRESS).read_text())
        differs = [key for key in identity if progress.get(key) != identity[key]]
        if differs:
            print(f"{run_dir}: the stored self-critical run differs in {', '.join(differs)}; "
                  "starting over")
            return []
        model.load_weights(run_dir / progress["weights"])
        with np.load(run_dir / progress["optimizer"]) as stored:
            values = [stored[f"arr_{i}"] for i in range(len(stored.files))]
        if len(values) != len(optimizer.variables):
            raise ValueError(f"it holds {len(values)} optimiser arrays for "
                             f"{len(optimizer.variables)} variables")
        for variable, value in zip(optimizer.variables, values, strict=True):
            variable.assign(value)
        history = progress["history"]
    except (OSError, ValueError, KeyError) as error:
        for variable, value in zip((*model.weights, *optimizer.variables), before, strict=True):
            variable.assign(value)
        print(f"{run_dir}: the stored self-critical run cannot be read "
              f"({' '.join(str(error).split())}); starting over")
        return []
    step = history[-1]["step"]
    finished = step >= identity["settings"]["steps"]
    print(f"{run_dir.name}: " + ("finished, loaded" if finished else f"continuing from step {step}"))
    return history


def run_or_load(profile, name: str, *, truth: float = 0.0, discrimination: float = 0.0,
                seed: int = 0, verbose: bool = True):
    """Chapter 5's captioner after the self-critical stage ``name`` of ``profile`` (Shapes), with
    the reward's ``truth`` and ``discrimination`` weights, kept in
    ``runs/06_scst_<name>-<profile>`` (:func:`utils.train.run_path`): a finished stage is
    loaded, an interrupted one continued. Returns ``(model, history)``."""
    model, vocabulary, splits = train.train_or_load(profile, verbose=0)
    reward = CaptionReward(splits["train"].references, splits["train"].scenes, truth,
                           discrimination)
    history = train_self_critical(model, splits["train"], splits["val"], vocabulary, reward,
                                  SETTINGS[profile.name], max_length=profile.max_caption_tokens + 1,
                                  run_dir=train.run_path(f"06_scst_{name}", profile), seed=seed,
                                  verbose=verbose)
    return model, history
