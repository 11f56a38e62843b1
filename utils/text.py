"""Caption text: standardisation, a vocabulary with special tokens, encode/decode.

Pure Python (no TensorFlow): the vocabulary is small and its order must be deterministic, so it
is built here and saved as JSON. ``keras.layers.TextVectorization`` can be created from
:meth:`Vocabulary.words` when encoding inside a ``tf.data`` pipeline is wanted.
"""
from __future__ import annotations

import collections
import json
import pathlib
import unicodedata
from collections.abc import Iterable, Sequence

PAD, UNK, START, END = "<pad>", "<unk>", "<start>", "<end>"

#: What survives standardisation: letters, digits and combining marks of any script, "_", and
#: "<" ">" so that ``<start>``/``<end>`` stay whole. Everything else (punctuation, symbols) becomes a
#: space. The TensorFlow twin, :func:`tf_standardize`, uses the same classes in RE2 syntax.
_TF_DROPPED = r"[^\p{L}\p{N}\p{M}_\s<>]+"


def _kept(character: str) -> bool:
    return character in "_<>" or character.isspace() or unicodedata.category(character)[0] in "LNM"


def standardize(caption: str) -> list[str]:
    """Lower-case, turn punctuation and symbols into spaces, split on whitespace.

    Letters of every script are kept (``"café"``, ``"猫"``), so captions in other languages are
    not destroyed; ``<start>`` and ``<end>`` pass through unchanged.
    """
    return "".join(c if _kept(c) else " " for c in caption.lower()).split()


def tf_standardize(captions):
    """:func:`standardize` as TensorFlow ops, for ``TextVectorization(standardize=...)``.

    Keras' default standardisation strips ``<`` and ``>`` and so turns ``<start>`` into
    ``start``, a word that may also occur in captions; this one keeps them.
    """
    import tensorflow as tf

    lowered = tf.strings.lower(captions, encoding="utf-8")
    spaced = tf.strings.regex_replace(lowered, _TF_DROPPED, " ")
    return tf.strings.strip(tf.strings.regex_replace(spaced, r"\s+", " "))


class Vocabulary:
    """Maps words to ids: 0 is padding, 1 unknown, 2 ``<start>``, 3 ``<end>``, then the words."""

    pad_id, unk_id, start_id, end_id = 0, 1, 2, 3

    def __init__(self, words: Sequence[str]):
        # The four special entries take ids 0-3 and appear nowhere else, whether or not
        # ``words`` lists them (a saved vocabulary does, a new one need not).
        specials = [PAD, UNK, START, END]
        self._words = specials + [w for w in words if w not in specials]
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

    def text_vectorization(self, length: int):
        """A Keras ``TextVectorization`` layer that maps raw captions to the same ids as
        :meth:`encode` (``<start> ... <end>``, padded to ``length``), for use in ``tf.data``."""
        import keras

        return _CaptionVectorization(self, length, keras)

    def save(self, path: str | pathlib.Path) -> None:
        pathlib.Path(path).write_text(json.dumps({"words": self._words}, ensure_ascii=False, indent=0))

    @classmethod
    def load(cls, path: str | pathlib.Path) -> "Vocabulary":
        return cls(json.loads(pathlib.Path(path).read_text())["words"])


class _CaptionVectorization:
    """Callable: ``string[B]`` captions -> ``int64[B, length]`` ids, equal to ``Vocabulary.encode``.

    ``TextVectorization`` reserves id 0 for padding and id 1 for unknown words, exactly as the
    vocabulary does, so our words from id 2 on are handed to it in order. Its own truncation would
    cut ``<end>`` off long captions; instead the words are cut first and the markers added after.
    """

    def __init__(self, vocabulary: Vocabulary, length: int, keras):
        self.length = length
        self.start_id, self.end_id = vocabulary.start_id, vocabulary.end_id
        self.layer = keras.layers.TextVectorization(
            standardize=tf_standardize, split="whitespace", vocabulary=vocabulary.words[2:],
            ragged=True)

    def __call__(self, captions):
        import tensorflow as tf

        words = tf.cast(self.layer(captions)[:, : self.length - 2], tf.int64)
        rows = words.nrows()
        starts = tf.RaggedTensor.from_tensor(tf.fill([rows, 1], tf.constant(self.start_id, tf.int64)))
        ends = tf.RaggedTensor.from_tensor(tf.fill([rows, 1], tf.constant(self.end_id, tf.int64)))
        ids = tf.concat([starts, words, ends], axis=1)
        return ids.to_tensor(default_value=0, shape=[None, self.length])
