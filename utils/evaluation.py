"""Measures that only a dataset with known scenes allows: is a caption true, and did the model
look at the object it named? (NumPy only; the standard text metrics are in :mod:`utils.metrics`.)

:func:`score_split` is the book's one caption-and-score path: it decodes a split (importing the
model code only when called) and reports the text metrics together with these measures.
"""
from __future__ import annotations

import collections
import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from . import shapes

RELATION_WORDS = frozenset({"left", "right", "above", "below"})
_SINGULARS = {plural: shape for shape, plural in shapes.PLURALS.items()}
OPPOSITE_WORDS = {"left": "right", "right": "left", "above": "below", "below": "above"}


class ScoredSplit(NamedTuple):
    """What :func:`score_split` returns: the captions, the attention weights behind their words
    (``[N, T, R]``) and the report."""

    captions: list[str]
    attention: np.ndarray
    report: dict


def score_split(model, split, vocabulary, max_length: int, *, count: int | None = None,
                beam_size: int = 1, metrics: Sequence[str] | None = None,
                batch_size: int = 250) -> ScoredSplit:
    """Caption the first ``count`` images of ``split`` (all by default) in batches, greedily or
    with a beam, and score them: the command line's ``evaluate``, training's score after each
    epoch, the chapters and the benchmarks all caption and score through this one function.

    ``split`` is anything with ``pixels`` (``uint8[N, H, W, 3]``, or cached features, read a
    batch at a time), ``references`` (N lists of
    raw captions) and ``scenes`` (N scene dicts, or ``None`` off Shapes), such as a
    :class:`utils.datasets.EncodedSplit`. ``metrics`` go to
    :func:`utils.metrics.evaluate_captions` (default: all it offers but SPICE). The report holds
    their scores under the toolkit's names (``Bleu_4``, ``CIDEr``, ...) and, when the scenes are
    known, ``exact``, ``correct`` and ``complete`` (shares of all captions), ``by_scene``
    (:func:`caption_rates`), ``informativeness`` (:func:`informativeness`) and ``grounding``
    (:func:`attention_grounding`)."""
    from . import metrics as text_metrics
    from .decoding import caption_images

    count = len(split.pixels) if count is None else min(count, len(split.pixels))
    captions, attention = caption_images(model, split.pixels, vocabulary, max_length,
                                         batch_size=batch_size, beam_size=beam_size, count=count)
    references = [list(split.references[i]) for i in range(count)]
    report = text_metrics.evaluate_captions(dict(enumerate(references)),
                                            dict(enumerate(captions)), metrics=metrics)
    if split.scenes is not None:
        scenes = split.scenes[:count]
        rates = caption_rates(captions, scenes)
        report.update({key: rates["all"][key] for key in ("exact", "correct", "complete")})
        report["by_scene"] = rates
        report["informativeness"] = informativeness(captions, scenes, references)
        report["grounding"] = attention_grounding(captions, attention, scenes)
    return ScoredSplit(captions, attention, report)


def caption_rates(captions: Sequence[str], scenes: Sequence[dict]) -> dict[str, dict[str, float]]:
    """Share of captions that parse, are correct, complete and exact, overall and per group.

    Groups: ``all``, ``1 object`` / ``2 objects`` / ``3 objects`` (by the true scene), and
    ``with relation`` / ``without relation`` (by whether the *generated* caption states one, as
    :func:`informativeness` decides it: a caption outside the grammar states none).
    Each group also reports its ``count``.
    """
    groups: dict[str, list] = collections.defaultdict(list)
    for caption, scene in zip(captions, scenes, strict=True):
        check = shapes.check_caption(caption, scene)
        objects = len(scene["objects"])
        # as informativeness() counts it: a relation the parser finds
        relation = bool(shapes.stated_relations(caption, scene))
        for name in ("all", f"{objects} object{'s' if objects > 1 else ''}",
                     "with relation" if relation else "without relation"):
            groups[name].append(check)
    order = ["all", "1 object", "2 objects", "3 objects", "with relation", "without relation"]
    return {name: _rates(groups[name]) for name in order if groups[name]}


def informativeness(captions: Sequence[str], scenes: Sequence[dict],
                    references: Sequence[Sequence[str]]) -> dict[str, dict[str, float]]:
    """How much the captions say beyond the list of objects: do they state where things are?

    For the scenes of 2 and of 3 objects (where a relation can be stated): the share of
    captions that state at least one relation, beside the same share among those scenes'
    references (:data:`utils.shapes.RELATION_SHARE` is what the references were written with).
    Over all captions: how many relations they state, the share of those that are true
    (:func:`utils.shapes.stated_relations`), and the exact rate among the captions that state
    one. A caption outside the grammar states nothing. Shares of nothing are ``nan``."""
    by_size: dict[int, dict[str, list[bool]]] = collections.defaultdict(
        lambda: {"captions": [], "references": []})
    stated, exact = [], []
    for caption, scene, refs in zip(captions, scenes, references, strict=True):
        relations = shapes.stated_relations(caption, scene) or []
        stated += relations
        if relations:
            exact.append(shapes.check_caption(caption, scene).exact)
        objects = len(scene["objects"])
        if objects in (2, 3):
            by_size[objects]["captions"].append(bool(relations))
            by_size[objects]["references"] += [bool(shapes.stated_relations(r, scene))
                                               for r in refs]
    report = {f"{n} objects": {"count": len(by_size[n]["captions"]),
                               "captions with a relation": _share(by_size[n]["captions"]),
                               "references with a relation": _share(by_size[n]["references"])}
              for n in (2, 3) if by_size[n]["captions"]}
    report["relations"] = {"stated": len(stated), "true": _share(stated),
                           "exact when stating one": _share(exact)}
    return report


def relation_summary(report: dict) -> dict[str, float]:
    """The three figures of an :func:`informativeness` report that the book's tables show:
    ``relation, 2 objects`` and ``relation, 3 objects`` (the share of those scenes' captions
    that state a relation; ``nan`` when the split has no such scene) and ``relations true``."""
    summary = {f"relation, {n} objects": report.get(f"{n} objects", {}).get(
        "captions with a relation", float("nan")) for n in (2, 3)}
    summary["relations true"] = report["relations"]["true"]
    return summary


def _share(flags: Sequence[bool]) -> float:
    return float(np.mean(flags)) if len(flags) else float("nan")


def _rates(checks: list) -> dict[str, float]:
    return {"count": len(checks),
            **{field: float(np.mean([getattr(c, field) for c in checks]))
               for field in ("parsed", "correct", "complete", "exact")}}


def attention_grounding(captions: Sequence[str], attention: np.ndarray, scenes: Sequence[dict]
                        ) -> dict[str, float]:
    """How often the attention peak lies on the object being named.

    For each shape noun of each parsable caption, take the attention weights of the step that
    emitted it (``attention[i, t]``, ``[N, T, R]`` with ``R`` a square grid over the image), find
    the most attended grid cell, and count a hit when that cell overlaps the true box of an object
    the noun denotes. Nouns denoting no object (a wrong caption) are not counted.
    Returns ``{"grounding": hit rate, "nouns": how many nouns were counted}``.
    """
    hits = counted = 0
    for caption, weights, scene in zip(captions, attention, scenes, strict=True):
        named = shapes.mentions(caption, scene)
        if not named:
            continue
        cells = _cell_boxes(weights.shape[-1], scene["image_size"])
        for position, objects in named:
            if not objects or position >= len(weights):
                continue
            peak = cells[int(np.argmax(weights[position]))]
            counted += 1
            hits += any(_overlap(peak, scene["objects"][i]["bbox"]) for i in objects)
    return {"grounding": hits / counted if counted else float("nan"), "nouns": counted}


def _cell_boxes(regions: int, image_size: int) -> list[tuple[float, float, float, float]]:
    """Pixel box ``(x0, y0, x1, y1)`` of each cell of a square grid, row by row."""
    side = int(round(math.sqrt(regions)))
    if side * side != regions:
        raise ValueError(f"{regions} regions do not form a square grid")
    step = image_size / side
    return [(col * step, row * step, (col + 1) * step, (row + 1) * step)
            for row in range(side) for col in range(side)]


def _overlap(cell: Sequence[float], box: Sequence[float]) -> bool:
    return cell[0] < box[2] and box[0] < cell[2] and cell[1] < box[3] and box[1] < cell[3]


def relation_pairs(split_references: Sequence[Sequence[str]], scenes: Sequence[dict]
                   ) -> list[tuple[int, str, str]]:
    """True captions that state a spatial relation, each beside its mirror image.

    For every reference that states a relation ("a red circle left of a blue square") and is
    true of its scene, the relation words are swapped for their opposites ("... right of ...").
    The swapped caption names the same objects with the same words, and is false: only a model
    that knows *where* the objects are can tell the two apart. Returns
    ``[(image index, true caption, swapped caption)]``.
    """
    pairs = []
    for index, (references, scene) in enumerate(zip(split_references, scenes, strict=True)):
        for caption in references:
            words = shapes.tokenize(caption)
            if not RELATION_WORDS & set(words):
                continue
            swapped = " ".join(OPPOSITE_WORDS.get(word, word) for word in words)
            if shapes.check_caption(caption, scene).correct and \
                    not shapes.check_caption(swapped, scene).correct:
                pairs.append((index, " ".join(words), swapped))
    return pairs


def attribute_confusions(captions: Sequence[str], attention: np.ndarray, scenes: Sequence[dict]
                         ) -> list[dict[str, str]]:
    """What the model said about the object it was looking at, beside the truth.

    For every shape noun of every caption (any caption, right or wrong), the attention peak of
    the step that emitted it (``attention [N, T, R]``) picks the object under it (the one whose
    box centre is nearest the peak cell's centre, among those the cell overlaps); the colour
    word just before the noun, if any, and the noun itself are set beside that object's true
    colour and shape. Nouns whose peak lies on no object are skipped. Returns one
    ``{"true colour", "said colour", "true shape", "said shape"}`` per noun (``said colour`` is
    ``""`` when the caption gave none): the raw material of a confusion matrix.
    """
    rows = []
    for caption, weights, scene in zip(captions, attention, scenes, strict=True):
        tokens = shapes.tokenize(caption)
        cells = _cell_boxes(weights.shape[-1], scene["image_size"])
        for position, token in enumerate(tokens):
            noun = _SINGULARS.get(token, token)
            if noun not in shapes.SHAPES or position >= len(weights):
                continue
            peak = cells[int(np.argmax(weights[position]))]
            under = [o for o in scene["objects"] if _overlap(peak, o["bbox"])]
            if not under:
                continue
            centre = ((peak[0] + peak[2]) / 2, (peak[1] + peak[3]) / 2)
            target = min(under, key=lambda o: math.dist(centre, _box_centre(o["bbox"])))
            before = tokens[position - 1] if position else ""
            rows.append({"true colour": target["colour"],
                         "said colour": before if before in shapes.COLOURS else "",
                         "true shape": target["shape"], "said shape": noun})
    return rows


def _box_centre(box: Sequence[float]) -> tuple[float, float]:
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
