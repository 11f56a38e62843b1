"""Caption text: standardisation, a vocabulary with special tokens, encode/decode.

Pure Python (no TensorFlow): the vocabulary is small and its order must be deterministic, so it
is built here and saved as JSON. ``keras.layers.TextVectorization`` can be created from
:meth:`Vocabulary.words` when encoding inside a ``tf.data`` pipeline is wanted.
"""
from __future__ import annotations

import collections
import json
import pathlib
import re
from collections.abc import Iterable, Sequence

PAD, UNK, START, END = "<pad>", "<unk>", "<start>", "<end>"
_PUNCTUATION = re.compile(r"[^\w\s<>]+")


def standardize(caption: str) -> list[str]:
    """Lower-case, drop punctuation, split on whitespace. Non-ASCII letters are kept."""
    return _PUNCTUATION.sub(" ", caption.lower()).split()


class Vocabulary:
    """Maps words to ids: 0 is padding, 1 unknown, 2 ``<start>``, 3 ``<end>``, then the words."""

    pad_id, unk_id, start_id, end_id = 0, 1, 2, 3

    def __init__(self, words: Sequence[str]):
        specials = [PAD, UNK, START, END]
        if list(words[:4]) != specials:
            words = specials + [w for w in words if w not in specials]
        self._words = list(words)
        self._index = {word: i for i, word in enumerate(self._words)}

    @classmethod
    def from_captions(cls, token_lists: Iterable[Sequence[str]], min_count: int = 1) -> "Vocabulary":
        """Build from tokenised captions; words seen fewer than ``min_count`` times become ``<unk>``.

        Order: most frequent first, ties alphabetical, so the same captions give the same ids.
        """
        counts = collections.Counter(token for tokens in token_lists for token in tokens)
        kept = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
        return cls(kept)

    @property
    def words(self) -> list[str]:
        return list(self._words)

    def __len__(self) -> int:
        return len(self._words)

    def encode(self, tokens: Sequence[str], length: int) -> list[int]:
        """``<start> tokens <end>`` as ids, padded with 0 to ``length``.

        Captions that do not fit are truncated, keeping the ``<end>`` token.
        """
        if length < 2:
            raise ValueError(f"length must leave room for <start> and <end>, got {length}")
        ids = [self._index.get(token, self.unk_id) for token in tokens][: length - 2]
        ids = [self.start_id, *ids, self.end_id]
        return ids + [self.pad_id] * (length - len(ids))

    def decode(self, ids: Iterable[int]) -> str:
        """Ids back to a caption: stops at ``<end>`` or padding, skips ``<start>``."""
        words = []
        for i in ids:
            i = int(i)
            if i in (self.end_id, self.pad_id):
                break
            if i != self.start_id:
                words.append(self._words[i] if 0 <= i < len(self._words) else UNK)
        return " ".join(words)

    def save(self, path: str | pathlib.Path) -> None:
        pathlib.Path(path).write_text(json.dumps({"words": self._words}, ensure_ascii=False, indent=0))

    @classmethod
    def load(cls, path: str | pathlib.Path) -> "Vocabulary":
        return cls(json.loads(pathlib.Path(path).read_text())["words"])
