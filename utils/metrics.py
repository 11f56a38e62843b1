"""Caption metrics in plain Python (no TensorFlow): corpus BLEU-1..4 for now.

Captions are compared as *words*, never as vocabulary ids: a metric on ids silently depends on
the vocabulary and cannot be compared with published numbers.
"""
from __future__ import annotations

import collections
import math
from collections.abc import Mapping, Sequence

from .text import standardize

# The COCO caption toolkit adds these to avoid log(0) and 0/0; using the same constants keeps
# our numbers equal to its numbers, also when an n-gram order has no match at all.
_TINY, _SMALL = 1e-15, 1e-9


def _ngrams(tokens: Sequence[str], n: int) -> collections.Counter:
    return collections.Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def corpus_bleu(references: Mapping[object, Sequence[str]], candidates: Mapping[object, str],
                max_n: int = 4) -> list[float]:
    """Corpus-level BLEU-1..``max_n`` of raw-text ``candidates`` against ``references``.

    ``references``: ``{image_id: [caption, ...]}``; ``candidates``: ``{image_id: caption}``.
    Clipped n-gram counts and lengths are summed over the corpus before the precisions are taken
    (Papineni et al., 2002); the brevity penalty uses, per image, the reference length closest to
    the candidate's (shorter on ties), as the COCO caption toolkit does.
    """
    missing = set(candidates) - set(references)
    if missing:
        raise KeyError(f"candidates without references: {sorted(map(str, missing))[:5]}")
    matches, totals = [0] * max_n, [0] * max_n
    candidate_length = reference_length = 0
    for image_id, candidate in candidates.items():
        hypothesis = standardize(candidate)
        refs = [standardize(r) for r in references[image_id]]
        candidate_length += len(hypothesis)
        reference_length += min((abs(len(r) - len(hypothesis)), len(r)) for r in refs)[1]
        for n in range(1, max_n + 1):
            counts = _ngrams(hypothesis, n)
            best = collections.Counter()
            for ref in refs:
                best |= _ngrams(ref, n)  # the max count of each n-gram over the references
            matches[n - 1] += sum(min(count, best[gram]) for gram, count in counts.items())
            totals[n - 1] += max(len(hypothesis) - n + 1, 0)
    scores, product = [], 1.0
    for n in range(max_n):
        product *= (matches[n] + _TINY) / (totals[n] + _SMALL)
        scores.append(product ** (1.0 / (n + 1)))
    ratio = (candidate_length + _TINY) / (reference_length + _SMALL)
    if ratio < 1:
        scores = [score * math.exp(1 - 1 / ratio) for score in scores]
    return scores
