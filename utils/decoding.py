"""Turning next-word probabilities into captions: greedy search, beam search and sampling.

Every search here drives a *step function* and knows nothing about the model behind it::

    step_fn(tokens, state) -> (log_probs, new_state)

``tokens`` are the words fed at this step, ``int32[N]`` (``<start>`` first, then each row's last
word); ``state`` is any nest of tensors (tuple, dict, ...) whose leading axis is ``N``;
``log_probs`` are the ``float32[N, V]`` log-probabilities of the next word (``V`` static). A
search starts from a per-image ``initial_state`` (leading axis ``B``) and repeats it for the ``K``
hypotheses of each image, rows grouped per image: image ``b`` owns rows ``b*K ... b*K + K-1``,
``N = B*K``. Whenever beam search reorders the hypotheses it gathers every tensor of the state
the same way (except those the step returns untouched: see :func:`_reorder_state`).

**Attention convention.** When the state is a dict with an ``"attention"`` entry, the step
function writes the attention weights of the step there (``float32[N, R]``, or any trailing shape);
in ``initial_state`` that entry holds zeros of the same shape. Being part of the state, the weights
follow their hypothesis when beams are reordered, and the search records them for every word.

**One graph, a while loop.** Each search is a single ``tf.function`` over the whole batch around a
while loop (``keras.ops.while_loop``) that stops as soon as every hypothesis of every image has
emitted ``<end>`` (``max_length`` bounds it). A Python loop unrolled inside ``tf.function`` would
always run ``max_length`` steps and grow the graph with it; captions usually end well before the
limit, and beam search pays ``K`` decoder rows for every extra step. All loop tensors keep static
shapes (sequences are written in place with a select, not appended), so the loop also compiles
with XLA (``jit_compile=True``), which it does not need.

**Every backend.** Greedy and beam search are written with ``keras.ops``, so they run on the
TensorFlow, JAX and PyTorch backends alike; the ``tf.function`` graph (and XLA) is TensorFlow's
speed-up. On JAX the while loop is ``jax.lax.while_loop``, compiled by JAX itself; on PyTorch it
is a Python loop. Sampling (:func:`sample`) uses TensorFlow's stateless random ops and runs on
TensorFlow only.

Shapes: ``B`` images, ``K`` hypotheses per image (beam size, or number of samples), ``N = B*K``,
``V`` vocabulary, ``L`` ``max_length``, ``R`` attention regions.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import keras
import numpy as np
from keras import ops

try:  # the graphs of TensorFlow's fast path, and sampling
    import tensorflow as tf
except ImportError:
    tf = None

#: The id written after ``<end>``; a finished hypothesis is fed this id and scores nothing for it.
PAD_ID = 0
#: The state entry that carries the attention weights of the step (see the module docstring).
ATTENTION = "attention"

StepFn = Callable[[Any, Any], tuple[Any, Any]]


class BeamResult(NamedTuple):
    """Captions for ``B`` images, ``K`` each: best first after beam search, in draw order after
    sampling.

    - ``sequences`` ``int32[B, K, L]``: the words after ``<start>``, ``<end>`` included, 0 after it.
    - ``scores`` ``float32[B, K]``: the ranking score, ``log_probs / gnmt_length_penalty(lengths)``;
      ``-inf`` marks an empty slot (fewer than ``K`` distinct captions exist).
    - ``log_probs`` ``float32[B, K]``: the summed log-probabilities of the words, ``<end>``
      included.
    - ``lengths`` ``int32[B, K]``: words including ``<end>``; ``L`` for a caption that never ended,
      0 for an empty slot (whose words are all 0).
    - ``attention`` ``float32[B, K, L, R]`` or ``None``: the weights behind each word, zeros after
      ``<end>``; ``None`` when the state carries no attention.
    """

    sequences: Any
    scores: Any
    log_probs: Any
    lengths: Any
    attention: Any


class _Plan(NamedTuple):
    """The static settings of one search; a tuple of Python values, so equal plans share a trace."""

    batch_size: int
    width: int  # K: beams, or samples, per image
    start_id: int
    end_id: int
    max_length: int
    method: str  # "beam" or "sample"
    top_k: int = 0
    argmax: bool = False  # sampling at temperature 0


class _Hypotheses(NamedTuple):
    """Everything the loop carries per row besides the model state (``N`` rows)."""

    tokens: Any  # int32[N], fed at the next step
    sums: Any  # float32[N], summed log-probabilities so far
    lengths: Any  # int32[N], words so far, <end> included
    finished: Any  # bool[N]
    sequences: Any  # int32[N, L]
    attention: Any  # float32[N, L, R...]; float32[N, L, 0] when the state has no attention


def gnmt_length_penalty(lengths: Any, alpha: Any) -> Any:
    """GNMT's length penalty ``((5 + length) / 6) ** alpha`` (Wu et al., 2016), which divides a
    caption's summed log-probability; 1 for ``alpha = 0``. Larger ``alpha`` favours longer
    captions."""
    return ops.power((5.0 + ops.cast(lengths, "float32")) / 6.0, alpha)


def beam_search(step_fn: StepFn, initial_state: Any, *, batch_size: int, start_id: int,
                end_id: int, beam_size: int, max_length: int, length_penalty: float = 0.0,
                jit_compile: bool = False) -> BeamResult:
    """Keep the ``beam_size`` best partial captions of every image, extend each by every word,
    keep the best ``beam_size`` of those, until all have ended or ``max_length`` is reached.

    Candidates are ranked by ``sum of log-probabilities / gnmt_length_penalty(length)``; with
    ``length_penalty=0`` that is the plain sum. ``initial_state`` leads with ``batch_size``.
    """
    plan, knobs = _beam_plan(batch_size, start_id, end_id, max_length, beam_size, length_penalty)
    return _compiled(_search, jit_compile)(step_fn, initial_state, plan, knobs)


def greedy(step_fn: StepFn, initial_state: Any, *, batch_size: int, start_id: int, end_id: int,
           max_length: int, jit_compile: bool = False) -> BeamResult:
    """The most likely next word at every step: beam search with a beam of one."""
    return beam_search(step_fn, initial_state, batch_size=batch_size, start_id=start_id,
                       end_id=end_id, beam_size=1, max_length=max_length, jit_compile=jit_compile)


def sample(step_fn: StepFn, initial_state: Any, *, batch_size: int, start_id: int, end_id: int,
           max_length: int, num_samples: int = 1, temperature: float = 1.0, top_k: int = 0,
           seed: int = 0, jit_compile: bool = False) -> BeamResult:
    """Draw ``num_samples`` captions per image, each word from ``softmax(log_probs / temperature)``
    restricted to the ``top_k`` most likely words (``top_k=0``: all of them).

    ``temperature=0`` and ``top_k=1`` both give greedy decoding. The same ``seed`` gives the same
    captions (stateless random ops). Scores are log-probabilities under the model itself, not
    under the tempered distribution, so they compare with those of the other searches.
    """
    plan, knobs = _sample_plan(batch_size, start_id, end_id, max_length, num_samples,
                               temperature, top_k, seed)
    return _compiled(_search, jit_compile)(step_fn, initial_state, plan, knobs)


def _beam_plan(batch_size, start_id, end_id, max_length, beam_size, alpha):
    """The static plan and the tensor settings (``knobs``) of a beam search."""
    _check_sizes(batch_size, beam_size, max_length)
    plan = _Plan(int(batch_size), beam_size, start_id, end_id, max_length, "beam")
    return plan, {"alpha": ops.convert_to_tensor(alpha, "float32")}


def _sample_plan(batch_size, start_id, end_id, max_length, num_samples, temperature, top_k, seed):
    """The static plan and the tensor settings of sampling. Temperature and seed are tensors, so
    trying another value does not trace the graph again."""
    _check_sizes(batch_size, num_samples, max_length)
    if keras.backend.backend() != "tensorflow":
        raise NotImplementedError(
            "sampling uses TensorFlow's stateless random ops and runs on the TensorFlow backend "
            f"only (this is {keras.backend.backend()!r}); greedy and beam search run on every "
            "backend")
    if temperature < 0 or top_k < 0:
        raise ValueError(f"temperature and top_k must be >= 0, got {temperature} and {top_k}")
    plan = _Plan(int(batch_size), num_samples, start_id, end_id, max_length, "sample", top_k,
                 argmax=temperature == 0)
    return plan, {"alpha": tf.constant(0.0),
                  "temperature": tf.constant(temperature or 1.0, tf.float32),
                  "seed": tf.constant([seed, 0], tf.int64)}


def _check_sizes(batch_size, width: int, max_length: int) -> None:
    # The batch size shapes the graph: a tensor (or an unknown dimension) cannot do that.
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive Python int (static), got {batch_size!r}")
    if width < 1 or max_length < 1:
        raise ValueError(f"beam_size/num_samples and max_length must be >= 1, "
                         f"got {width} and {max_length}")


def _search(step_fn: StepFn, initial_state: Any, plan: _Plan, knobs: dict) -> BeamResult:
    """The search loop shared by beam search and sampling; they differ only in how each step
    chooses the rows to continue and their words."""
    state = keras.tree.map_structure(lambda x: ops.repeat(x, plan.width, axis=0), initial_state)
    choose = _choose_beams if plan.method == "beam" else _choose_samples

    def unfinished(step, hypotheses, state):
        # -inf rows are empty beam slots (fewer distinct captions than beams); nothing grows there.
        done = ops.logical_or(hypotheses.finished, ops.equal(hypotheses.sums, float("-inf")))
        return ops.logical_not(ops.all(done))

    def advance(step, hypotheses, state):
        log_probs, new_state = step_fn(hypotheses.tokens, state)
        parents, tokens, token_log_probs = choose(
            step, ops.cast(log_probs, "float32"), hypotheses, plan, knobs)
        if parents is not None:
            hypotheses = _Hypotheses(*(ops.take(x, parents, axis=0) for x in hypotheses))
            new_state = _reorder_state(new_state, state, parents)
        state = new_state
        step_attention = _step_attention(state, plan.batch_size * plan.width)
        hypotheses = _extend(step, hypotheses, tokens, token_log_probs, step_attention,
                             plan.end_id)
        return step + 1, hypotheses, state

    _, hypotheses, _ = ops.while_loop(
        unfinished, advance, (ops.convert_to_tensor(0, "int32"), _start(plan, state), state),
        maximum_iterations=plan.max_length)
    return _result(hypotheses, plan, knobs["alpha"], has_attention=_has_attention(state))


#: (function, jit_compile) -> the function as one ``tf.function`` graph
_GRAPHS: dict = {}


def _compiled(function, jit_compile: bool):
    """``function`` as one TensorFlow graph (compiled by XLA with ``jit_compile``), traced once
    per model and plan. On PyTorch, and on JAX for a search over any step function:
    ``function`` itself (JAX compiles the while loop, but traces it again at every call)."""
    if keras.backend.backend() != "tensorflow":
        return function
    key = (function, jit_compile)
    if key not in _GRAPHS:
        _GRAPHS[key] = tf.function(function, jit_compile=jit_compile)
    return _GRAPHS[key]


def _jax_decode_images(model, images, plan: _Plan, knobs: dict) -> BeamResult:
    """:func:`_decode_images` compiled by ``jax.jit`` once per model and plan. A compiled JAX
    function may not read the model's variables (it would keep the values they had when it was
    traced), so their current values are passed in and bound with ``keras.StatelessScope``."""
    import jax

    if _JAX_DECODE not in _GRAPHS:
        def decode(model, plan, values, images, knobs):
            with keras.StatelessScope(state_mapping=list(zip(model.variables, values))):
                return _decode_images(model, images, plan, knobs)

        _GRAPHS[_JAX_DECODE] = jax.jit(decode, static_argnums=(0, 1))
    values = [variable.value for variable in model.variables]
    return _GRAPHS[_JAX_DECODE](model, plan, values, images, knobs)


_JAX_DECODE = "jax decode_images"


def _has_attention(state: Any) -> bool:
    return isinstance(state, Mapping) and ATTENTION in state


def _step_attention(state: Any, rows: int) -> Any:
    """The attention weights of the step, ``[N, R...]``; ``[N, 0]`` when the state has none."""
    if _has_attention(state):
        return ops.cast(state[ATTENTION], "float32")
    return ops.zeros([rows, 0])


def _start(plan: _Plan, state: Any) -> _Hypotheses:
    """All rows start at ``<start>`` with score 0, except that in beam search only the first beam
    of each image is alive: the ``K`` beams are identical, and expanding all of them would fill
    the beam with ``K`` copies of the same caption."""
    rows = plan.batch_size * plan.width
    first_scores = [0.0] + [0.0 if plan.method == "sample" else float("-inf")] * (plan.width - 1)
    attention_shape = _step_attention(state, rows).shape[1:]
    return _Hypotheses(
        tokens=ops.full([rows], plan.start_id, "int32"),
        sums=ops.tile(ops.convert_to_tensor(first_scores, "float32"), [plan.batch_size]),
        lengths=ops.zeros([rows], "int32"),
        finished=ops.zeros([rows], "bool"),
        sequences=ops.zeros([rows, plan.max_length], "int32"),
        attention=ops.zeros([rows, plan.max_length, *attention_shape]),
    )


def _choose_beams(step, log_probs, hypotheses, plan, knobs):
    """Rank all ``K*V`` continuations of each image and keep the best ``K``.

    Returns the row each survivor continues (``int32[N]``, or ``None`` when ``K = 1``: a single
    beam only ever continues itself), its new word and that word's log-probability.
    """
    batch, beams = plan.batch_size, plan.width
    if beams == 1:
        # Greedy: all continuations of a row share its score and length, so the best of the
        # ranking is the row's most probable word; no [N, V] ranking is built. A finished row's
        # word becomes padding in _extend, and it scores 0, as in the general case.
        tokens = ops.cast(ops.argmax(log_probs, axis=-1), "int32")
        chosen = _pick(log_probs, tokens)
        return None, tokens, ops.where(hypotheses.finished, 0.0, chosen)
    vocab = log_probs.shape[-1]
    # A finished caption has a single continuation, padding at no cost: it keeps its score and
    # its beam slot, and cannot be copied into several beams.
    pad_only = ops.where(ops.equal(ops.arange(vocab), PAD_ID), 0.0, float("-inf"))
    word_log_probs = ops.where(hypotheses.finished[:, None], pad_only, log_probs)  # [N, V]
    totals = hypotheses.sums[:, None] + word_log_probs
    lengths = ops.where(hypotheses.finished, hypotheses.lengths, step + 1)
    ranking = totals / gnmt_length_penalty(lengths, knobs["alpha"])[:, None]
    _, best = ops.top_k(ops.reshape(ranking, [batch, beams * vocab]), k=beams)  # [B, K]
    best = ops.cast(best, "int32")
    chosen_log_probs = ops.take_along_axis(
        ops.reshape(word_log_probs, [batch, beams * vocab]), best, axis=1)
    tokens = ops.reshape(best % vocab, [-1])
    parents = best // vocab + beams * ops.arange(batch, dtype="int32")[:, None]  # rows in [0, N)
    return ops.reshape(parents, [-1]), tokens, ops.reshape(chosen_log_probs, [-1])


def _pick(values, indices):
    """``values[i, indices[i]]`` for ``values [N, V]`` and ``indices int32[N]``: ``[N]``."""
    return ops.take_along_axis(values, indices[:, None], axis=1)[:, 0]


def _choose_samples(step, log_probs, hypotheses, plan, knobs):
    """Draw each row's next word; rows are never reordered. A finished row scores 0 from now on."""
    if plan.argmax:
        tokens = tf.argmax(log_probs, axis=-1, output_type=tf.int32)
    else:
        logits = log_probs / knobs["temperature"]
        # A different stream at every step, the same streams for the same seed.
        step_seed = tf.random.experimental.stateless_fold_in(knobs["seed"], step)
        if plan.top_k:
            logits, candidates = tf.math.top_k(logits, k=min(plan.top_k, logits.shape[-1]))
        picks = tf.random.stateless_categorical(logits, 1, step_seed, dtype=tf.int32)[:, 0]
        tokens = tf.gather(candidates, picks, batch_dims=1) if plan.top_k else picks
    token_log_probs = _pick(log_probs, tokens)
    return None, tokens, ops.where(hypotheses.finished, 0.0, token_log_probs)


def _reorder_state(new_state: Any, old_state: Any, parents: Any) -> Any:
    """Row ``i`` of every state tensor becomes row ``parents[i]`` (``int32[N]``).

    Tensors the step passed through untouched (the Captioner's regions and projected keys) are
    skipped: they still hold their tiled start, the same for every beam of an image, and beams
    only move within their image, so the gather would copy them onto themselves. For the
    Captioner at beam 5 that copy took more than half of the search time.
    """
    return keras.tree.map_structure(
        lambda new, old: new if new is old else ops.take(new, parents, axis=0),
        new_state, old_state)


def _extend(step, hypotheses: _Hypotheses, tokens, token_log_probs, step_attention,
            end_id: int) -> _Hypotheses:
    """Write this step's word, score and attention into every row. A row that had already ended
    gets padding and zero attention, and keeps its length; its score is the chooser's business
    (0, or -inf for a beam slot that copied a finished caption for want of candidates)."""
    ended = hypotheses.finished
    tokens = ops.where(ended, PAD_ID, tokens)
    step_attention = ops.where(_expand_like(ended, step_attention), 0.0, step_attention)
    return _Hypotheses(
        tokens=tokens,
        sums=hypotheses.sums + token_log_probs,
        lengths=ops.where(ended, hypotheses.lengths, step + 1),
        finished=ops.logical_or(ended, ops.equal(tokens, end_id)),
        sequences=_write_step(hypotheses.sequences, step, tokens),
        attention=_write_step(hypotheses.attention, step, step_attention),
    )


def _expand_like(flags: Any, values: Any) -> Any:
    """``bool[N]`` -> ``bool[N, 1, ...]`` broadcastable against ``values``."""
    return ops.reshape(flags, [-1] + [1] * (len(values.shape) - 1))


def _write_step(history: Any, step, values: Any) -> Any:
    """``history[:, step] = values`` for ``history [N, L, ...]``, as a select: the shape stays
    static, which a while loop (and XLA) needs."""
    at_step = ops.equal(ops.arange(history.shape[1], dtype="int32"), step)
    at_step = ops.reshape(at_step, [1, -1] + [1] * (len(history.shape) - 2))
    return ops.where(at_step, values[:, None], history)


def _result(hypotheses: _Hypotheses, plan: _Plan, alpha, has_attention: bool) -> BeamResult:
    """Split the ``N`` rows into ``[B, K]``; beam search's last ``top_k`` left them best first.
    Empty beam slots (score -inf) hold leftovers of pruned candidates: they are cleared to zeros."""
    empty = ops.equal(hypotheses.sums, float("-inf"))

    def per_image(x):
        x = ops.where(_expand_like(empty, x), ops.zeros_like(x), x)
        return ops.reshape(x, [plan.batch_size, plan.width, *x.shape[1:]])

    scores = hypotheses.sums / gnmt_length_penalty(hypotheses.lengths, alpha)
    return BeamResult(
        sequences=per_image(hypotheses.sequences),
        scores=ops.reshape(scores, [plan.batch_size, plan.width]),
        log_probs=ops.reshape(hypotheses.sums, [plan.batch_size, plan.width]),
        lengths=per_image(hypotheses.lengths),
        attention=per_image(hypotheses.attention) if has_attention else None,
    )


# --- The book's Captioner (utils.captioner) --------------------------------------------------


def captioner_initial_state(model, images: Any) -> dict:
    """Encode ``uint8[B, H, W, 3]`` images once and return the decoder's starting state:
    ``{"decoder": (h, c, projected_keys, regions), "attention": zeros [B, R]}``."""
    regions = model.encoder(images, training=False)
    return {"decoder": model.decoder.initial_state(regions),
            ATTENTION: ops.zeros_like(regions[:, :, 0], "float32")}


def captioner_step_fn(model) -> StepFn:
    """A step function over :func:`captioner_initial_state`'s state: one decoder step, turned
    into log-probabilities, with the step's attention weights stored in the state."""
    def step(tokens, state):
        logits, decoder_state, weights = model.decoder.step(tokens, state["decoder"])
        return ops.log_softmax(logits), {"decoder": decoder_state, ATTENTION: weights}

    return step


def decode_images(model, images, *, max_length: int, method: str = "beam", beam_size: int = 1,
                  length_penalty: float = 0.0, num_samples: int = 1, temperature: float = 1.0,
                  top_k: int = 0, seed: int = 0, jit_compile: bool = False,
                  compiled: bool = True) -> BeamResult:
    """Caption a batch of ``uint8[B, H, W, 3]`` images with the Captioner ``model``, encoding
    and searching in one graph (with ``jit_compile``, XLA compiles the encoder too).

    ``compiled=False`` runs the same search eagerly, operation by operation: no graph is
    traced, which is cheaper for a search run once (a second or so at the ``cpu`` sizes, against
    a fifth of that eagerly; ``benchmarks/latency.py``) and slower every time after.

    ``method="beam"`` keeps ``beam_size`` captions per image (1: greedy, the same words as
    ``utils.captioner.greedy_decode``); ``method="sample"`` draws ``num_samples`` with
    ``temperature``, ``top_k`` and ``seed`` as in :func:`sample`. Attention is ``[B, K, max_length, R]``.
    """
    images = ops.convert_to_tensor(images)
    batch_size = images.shape[0]
    if method == "beam":
        plan, knobs = _beam_plan(batch_size, model.start_id, model.end_id, max_length, beam_size,
                                 length_penalty)
    elif method == "sample":
        plan, knobs = _sample_plan(batch_size, model.start_id, model.end_id, max_length,
                                   num_samples, temperature, top_k, seed)
    else:
        raise ValueError(f"method must be 'beam' or 'sample', got {method!r}")
    if not compiled:
        return _decode_images(model, images, plan, knobs)
    if keras.backend.backend() == "jax":
        return _jax_decode_images(model, images, plan, knobs)
    return _compiled(_decode_images, jit_compile)(model, images, plan, knobs)


def _decode_images(model, images, plan: _Plan, knobs: dict) -> BeamResult:
    # Traced once per model and plan; the step function is built at trace time only.
    return _search(captioner_step_fn(model), captioner_initial_state(model, images), plan, knobs)



def caption_images(model, pixels: np.ndarray, vocabulary, max_length: int,
                   batch_size: int = 250, beam_size: int = 1,
                   count: int | None = None, compiled: bool = True
                   ) -> tuple[list[str], np.ndarray]:
    """Captions for the first ``count`` (default: all) of ``uint8[N, H, W, 3]`` images (greedy,
    or the best of a beam search) and the attention weights behind each word,
    ``[count, max_length, R]``. ``pixels`` may also be features on disk
    (:class:`utils.features.CachedFeatures`): they are read one batch at a time.
    ``compiled``: as :func:`decode_images`."""
    stop = len(pixels) if count is None else min(count, len(pixels))
    captions, attention = [], []
    for start in range(0, stop, batch_size):
        result = decode_images(model, pixels[start : min(start + batch_size, stop)],
                               max_length=max_length, beam_size=beam_size, compiled=compiled)
        sequences = ops.convert_to_numpy(result.sequences[:, 0])
        captions += [vocabulary.decode(row) for row in sequences]
        attention.append(ops.convert_to_numpy(result.attention[:, 0]))
    return captions, np.concatenate(attention)
