"""The performance suite (benchmarks/): it runs, writes valid records, its baseline computes the
same function as the book's model, and the README's table is the one its stored results give.

Nothing here is timed: a benchmark's numbers depend on the machine, so tests only check that the
suite works (``--smoke`` sizes, well under two minutes).
"""
import json
import math
import pathlib
import sys

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # benchmarks/ is not part of the installed package

from benchmarks import __main__ as runner  # noqa: E402
from benchmarks import suite  # noqa: E402
from benchmarks.reference import ReferenceCaptioner, pad_to  # noqa: E402
from utils.decoding import decode_images  # noqa: E402


@pytest.mark.slow
def test_smoke_run_writes_a_json_list_of_valid_records(tmp_path):
    out = tmp_path / "smoke.json"
    # In-process: the command line's own code path, without a second TensorFlow start-up.
    assert runner.main(["--smoke", "--out", str(out)]) == 0
    records = json.loads(out.read_text())
    suite.check_records(records)
    assert {item["group"] for item in records} == set(suite.GROUPS) - {"quality"}
    for item in records:
        assert set(item) >= {"name", "unit", "baseline", "fast", "ratio"}
        if item["ratio"] is not None:  # ratio > 1 means the fast path wins, in either direction
            expected = (item["fast"] / item["baseline"] if item["better"] == "higher"
                        else item["baseline"] / item["fast"])
            assert math.isclose(item["ratio"], expected, rel_tol=2e-3)
        assert len(item["run"]["load_average_start"]) == 3
        assert item["run"]["matmul_gflops"] > 0  # the machine's speed, in every run's record


def test_the_findings_say_when_the_quality_run_had_a_slower_machine():
    def run(gflops):
        return {"date": "2026-12-07T00:00:00", "matmul_gflops": gflops}

    peak = suite.record("dense matmul", "GFLOP/s", 200.0, 200.0, group="peak", ratio=False)
    quality = suite.record("Shapes exact-caption rate after 2 min of training", "exact rate",
                           0.5, 0.6, group="quality", sizes="shapes-cpu")
    peak["run"], quality["run"] = run(200.0), run(100.0)
    text = suite.findings([peak, quality])
    assert "0.50 and 0.60" in text
    assert "100 GFLOP/s, the peak group's at 200" in text
    quality["run"] = peak["run"]  # one run: nothing to tell apart
    assert "GFLOP/s" not in suite.findings([peak, quality])


def test_check_records_refuses_malformed_results():
    run = {"machine": {}, "date": "2026-01-01"}
    good = {"name": "x", "unit": "ms", "baseline": 2.0, "fast": 1.0, "ratio": 2.0, "run": run}
    suite.check_records([good])
    no_run = {key: value for key, value in good.items() if key != "run"}
    for broken in ({}, [], [{**good, "ratio": "2"}], [no_run]):
        with pytest.raises(ValueError):
            suite.check_records(broken)


def test_record_ratio_is_above_one_when_the_fast_path_wins():
    assert suite.record("t", "ms/step", 30.0, 10.0, better="lower", group="g")["ratio"] == 3.0
    assert suite.record("r", "captions/s", 10.0, 30.0, group="g", goal=2.0)["met"] is True
    assert suite.record("q", "rate", 0.0, 0.5, group="g")["ratio"] is None


def test_trimmed_positions_keep_every_real_token_and_round_up_to_a_bucket():
    captions = np.zeros((2, 18), np.int32)
    captions[0, :4] = [2, 5, 6, 3]
    captions[1, :6] = [2, 7, 8, 9, 10, 3]  # 5 decoder steps -> the bucket of 8
    assert suite.trimmed_positions(captions) == 9
    captions[1, 5:18] = 7
    captions[1, 17] = 3  # every position used: nothing to trim
    assert suite.trimmed_positions(captions) == 18


def test_flops_grow_by_one_decoder_step_per_step():
    sizes = suite.SIZES["tutorial"]
    b, r, d, a, u, e, v = 64, 64, 256, 512, 512, 256, 5000
    per_step = b * 2 * ((u + e) * a + r * a + r * d + (e + d + u) * 4 * u + (u + d + e) * v)
    keys = b * r * d * a * 2  # the projection the reference repeats at every step
    assert suite.forward_flops(sizes, 11) - suite.forward_flops(sizes, 10) == per_step
    assert (suite.forward_flops(sizes, 11, keys_every_step=True)
            - suite.forward_flops(sizes, 10, keys_every_step=True)) == per_step + keys
    assert suite.training_flops(sizes, 10) == 3 * suite.forward_flops(sizes, 10)


@pytest.mark.parametrize("encoder", ["features", "cnn"])
def test_reference_computes_the_same_loss_and_captions_as_the_captioner(encoder):
    """Same weights: the reference padded to its fixed length and the book's model on trimmed
    captions give the same loss, and one-image-at-a-time greedy gives the batched words."""
    sizes = suite.SIZES["tiny" if encoder == "features" else "tiny-cnn"]
    fast = suite.build_fast(sizes, jit=False)
    reference = suite.build_reference(sizes)
    reference.copy_weights_from(fast)
    rng = np.random.default_rng(0)
    inputs = suite.random_inputs(sizes, rng, 4)
    captions = suite.random_captions(sizes, rng, 4)
    trimmed = captions[:, : np.max(np.sum(captions != 0, axis=1))]  # cut after the last <end>
    assert trimmed.shape[1] < sizes.positions
    np.testing.assert_allclose(float(fast.objective(inputs, trimmed).loss),
                               float(reference.loss_on(inputs, pad_to(trimmed, sizes.positions))),
                               rtol=1e-5)
    batched = decode_images(fast, inputs, max_length=6).sequences[:, 0].numpy()
    for row, image in zip(batched, inputs):
        words = reference.caption_one(image, 6)
        np.testing.assert_array_equal(row[: len(words)], words)


def test_reference_keeps_its_fixed_length():
    model = ReferenceCaptioner(30, max_length=9, embed_dim=8, units=8, attention_units=8,
                               region_dim=8)
    assert pad_to(np.array([[2, 5, 3]]), 9).shape == (1, 9)
    with pytest.raises(ValueError):
        ReferenceCaptioner(30, max_length=9, encoder="pixels")
    assert model.max_length == 9


def test_stored_results_are_valid_and_the_readme_table_is_generated_from_them():
    stored = runner.stored_results()
    assert stored, "benchmarks/results/ holds no suite-*.json"
    for path in stored:
        records = json.loads(path.read_text())
        suite.check_records(records)
        assert all("load_average_end" in item["run"] for item in records)
    readme = runner.README.read_text()
    assert readme == suite.readme_with_table(readme, suite.render_table(stored)), (
        "benchmarks/README.md is out of date: run `python -m benchmarks --update-readme`")


def test_the_readme_quotes_the_measured_times_of_its_commands():
    """benchmarks/commands.py times `make test` / `make book` from a fresh clone; the README's
    figures are the stored ones (`python -m benchmarks.commands --update-readme`)."""
    from benchmarks import commands

    assert commands.duration(340.4) == "5 min 40 s" and commands.duration(59.6) == "1 min 0 s"
    stored = sorted(commands.RESULTS.glob("commands-*.json"))
    if not stored:  # the commit being timed cannot hold its own timing
        pytest.skip("no commands-*.json stored yet")
    readme = commands.README.read_text()
    for path in stored:
        record = json.loads(path.read_text())
        command = record["command"].removeprefix("make ")
        assert record["exit_status"] == 0 and record["machine"]["cpus"] >= 1
        phrases = [commands.readme_phrase(command, record)]
        if command == "book":  # and each chapter's own time, from the same run
            assert set(record["chapters"]) == {p.stem for p in ROOT.glob("chapters/*.ipynb")}
            phrases.append(commands.readme_phrase("chapters", record))
        for phrase in phrases:
            assert phrase in readme, (f"README.md does not quote {path.name}: "
                                      "python -m benchmarks.commands --update-readme")


def test_the_scst_benchmark_reads_its_headline_from_one_scored_report():
    from benchmarks import results_table
    from benchmarks import scst as scst_benchmark

    told = {"2 objects": {"captions with a relation": 0.5},
            "3 objects": {"captions with a relation": 0.25},
            "relations": {"stated": 8, "true": 0.75, "exact when stating one": 0.5}}
    report = {"test": {"CIDEr": 4.0, "exact": 0.9, "informativeness": told,
                       "by_scene": {"3 objects": {"exact": 0.8}}},
              "test_novel": {"exact": 0.6}}
    assert results_table.headline(report) == {
        "CIDEr": 4.0, "exact": 0.9, "exact, 3 objects": 0.8, "exact, test_novel": 0.6,
        "relation, 2 objects": 0.5, "relation, 3 objects": 0.25, "relations true": 0.75}
    assert set(scst_benchmark.REWARDS) == {"cider", "told"}


def test_the_readme_results_table_is_generated_from_the_stored_results():
    from benchmarks import results_table

    decoders, scst = results_table.stored()
    table = results_table.render(decoders, scst)
    readme = results_table.README.read_text()
    assert readme == results_table.readme_with_table(readme, table), (
        "README.md's results table is out of date: run "
        "`python -m benchmarks.results_table --update-readme`")
    names = [name for name, _ in results_table.rows(decoders, scst)]
    assert len(names) == len(decoders["results"]) + len(scst["results"])


# --- the tutorial's own loops (benchmarks/tutorial.py) -----------------------------------------


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _numpy_tutorial_step(model, encoded, hidden, token):
    """One step of the tutorial's decoder, as its text describes it, in NumPy: Bahdanau attention
    on the previous state, ``[context, word]`` into a GRU that starts from zeros (reset gate
    after the recurrent product, Keras' default), ``fc1``, ``fc2``."""
    def dense(layer, x):
        kernel, bias = (w.numpy() for w in layer.weights)
        return x @ kernel + bias

    att = model.attention
    scores = dense(att.V, np.tanh(dense(att.W1, encoded) + dense(att.W2, hidden)[:, None]))
    weights = np.exp(scores - scores.max(axis=1, keepdims=True))
    weights /= weights.sum(axis=1, keepdims=True)  # [B, R, 1]
    context = (weights * encoded).sum(axis=1)
    word = model.embedding.embeddings.numpy()[token]
    x = np.concatenate([context, word], axis=-1)
    kernel, recurrent, bias = (w.numpy() for w in model.gru.weights)
    units = recurrent.shape[0]
    inputs, from_zero_state = x @ kernel + bias[0], bias[1]  # zeros @ recurrent = 0
    z = _sigmoid(inputs[:, :units] + from_zero_state[:units])
    r = _sigmoid(inputs[:, units : 2 * units] + from_zero_state[units : 2 * units])
    candidate = np.tanh(inputs[:, 2 * units :] + r * from_zero_state[2 * units :])
    state = (1 - z) * candidate  # + z * 0, the zero initial state
    return dense(model.fc2, dense(model.fc1, state)), state, weights[..., 0]


def _numpy_encode(model, features):
    """The tutorial's encoder in NumPy: ``relu(features W + b)``."""
    kernel, bias = (w.numpy() for w in model.encoder_fc.weights)
    return np.maximum(features @ kernel + bias, 0)


def _tiny_tutorial(vocab=20, max_length=9):
    from benchmarks.tutorial import TutorialCaptioner

    tf.random.set_seed(0)
    model = TutorialCaptioner(vocab, max_length=max_length, embedding_dim=6, units=8)
    features = np.random.default_rng(1).normal(size=(3, 5, 7)).astype(np.float32)
    model.build_for(features)
    return model, features


def test_the_tutorial_train_step_computes_its_published_loss():
    """The loss on a fixed batch with fixed weights equals a direct NumPy computation of the
    tutorial's: per step the batch mean of the masked cross-entropy, padding in the
    denominator, summed over the steps of captions padded to ``max_length``."""
    model, features = _tiny_tutorial()
    captions = np.array([[2, 5, 6, 3], [2, 7, 3, 0], [2, 9, 10, 11]], np.int32)
    padded = np.pad(captions, [(0, 0), (0, 9 - 4)])
    encoded = _numpy_encode(model, features)
    hidden, total = np.zeros((3, 8)), 0.0
    for i in range(1, 9):
        logits, hidden, _ = _numpy_tutorial_step(model, encoded, hidden, padded[:, i - 1])
        target = padded[:, i]
        log_z = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
        cross_entropy = log_z - logits[np.arange(3), target]
        total += np.mean(cross_entropy * (target != 0))
    before = {w.path: w.numpy() for w in model.trainable_variables}
    # train_on runs this in a tf.function (the suite's smoke run traces it); eagerly it is the
    # same computation without seconds of tracing
    loss = float(model.train_step_eagerly(tf.constant(features), tf.constant(padded))[0])
    np.testing.assert_allclose(loss, total, rtol=1e-5)
    moved = {w.path.split("/")[-1] for w in model.trainable_variables
             if not np.array_equal(before[w.path], w.numpy())}
    unmoved = {w.path.split("/")[-1] for w in model.trainable_variables} - moved
    # The GRU always starts from zeros, so its recurrent kernel gets no gradient and never trains.
    assert unmoved == {"recurrent_kernel"}


def test_the_tutorial_evaluate_draws_each_word_from_the_published_step():
    """``evaluate`` is eager, one image, a word drawn per step until ``<end>``: the attention it
    records at every step is the NumPy step's, given the words it drew."""
    model, features = _tiny_tutorial()
    tf.random.set_seed(3)
    words, attention = model.evaluate(features[0], max_length=7)
    assert 1 <= len(words) <= 7 and attention.shape == (len(words), 5)
    assert "<end>" not in words[:-1] and (len(words) == 7 or words[-1] == "<end>")
    vocabulary = ["", "[UNK]", "<start>", "<end>"] + [f"w{i}" for i in range(4, 20)]
    ids = [2] + [vocabulary.index(word) for word in words]
    encoded = _numpy_encode(model, features[:1])
    hidden = np.zeros((1, 8))
    for step, token in enumerate(ids[:-1]):
        _, hidden, weights = _numpy_tutorial_step(model, encoded, hidden, np.array([token]))
        np.testing.assert_allclose(attention[step], weights[0], rtol=1e-5, atol=1e-7)


# --- streaming from the feature cache (benchmarks/streaming.py) --------------------------------


def test_the_streaming_benchmark_makes_caches_of_the_real_layout(tmp_path):
    from benchmarks import streaming
    from utils.features import CachedFeatures

    cache = streaming.make_cache(tmp_path, 3)
    assert cache.feature_shape == (64, 2048) and len(cache) == 3
    rows = np.asarray(CachedFeatures(cache, cache.keys))
    assert rows.dtype == np.float16 and np.isfinite(rows).all()
    assert 0 <= rows.min() and rows.max() < 1 and rows.std() > 0.1
    assert streaming.make_cache(tmp_path, 3).keys == cache.keys  # made once, then reused
    runs = [{"images": 2000, "mode": "memory", "peak_memory_mb": 3000, "images_per_second": 100},
            {"images": 2000, "mode": "disk", "peak_memory_mb": 2000, "images_per_second": 99},
            {"images": 40000, "mode": "disk", "peak_memory_mb": 2500, "images_per_second": 90}]
    goals = streaming.verdict(runs)
    assert goals["disk_peak_memory_growth"] == 0.25 and not goals["memory_goal_met"]
    assert goals["disk_over_memory_throughput_small"] == 0.99 and goals["throughput_goal_met"]


def test_every_stored_figure_in_the_readmes_is_generated_from_the_results():
    """benchmarks/README.md's blocks (benchmarks/report.py) and the main README's streaming
    figures are what the stored results give: `python -m benchmarks --update-readme` and
    `python -m benchmarks.streaming --update-readme` rewrite them."""
    from benchmarks import report, results_table, streaming

    readme = runner.README.read_text()
    assert readme == report.with_blocks(readme), (
        "benchmarks/README.md is out of date: run `python -m benchmarks --update-readme`")
    main_readme = results_table.README.read_text()
    stored = json.loads((ROOT / "benchmarks/results/streaming-cpu.json").read_text())
    expected = results_table.readme_with_table(main_readme, streaming.render(stored),
                                               streaming.README_START, streaming.README_END)
    assert main_readme == expected, "run `python -m benchmarks.streaming --update-readme`"
    assert stored["results"]["goals"]["memory_goal_met"]
    assert stored["results"]["goals"]["throughput_goal_met"]


def gpu_report(tokens_per_second: int, reached: float | None) -> dict:
    """A GPU check's results file, as ``gpu_check.run_check`` writes one, with made-up times."""
    from benchmarks import gpu_check

    training = [{"policy": "float32", "batch": 64, "ms_per_step": 20.0,
                 "real_tokens_per_second": tokens_per_second // 2},
                {"policy": "float32", "batch": 256, "ms_per_step": 48.0,
                 "real_tokens_per_second": tokens_per_second},
                {"policy": "mixed_float16", "batch": 256, "error": "TypeError: not here"},
                {"policy": "mixed_bfloat16", "batch": 256, "ms_per_step": 60.25,
                 "real_tokens_per_second": tokens_per_second * 4 // 5}]
    shapes = {"goal_reached_seconds": reached, "test": {"exact": 0.9612}}
    return {"run": {"device": "NVIDIA H200", "backend": "jax", "jax": "0.10.2",
                    "date": "2026-12-07T10:00:00+00:00"},
            "shapes": shapes, "training": training,
            "decoding": [{"search": "greedy", "captions_per_second": 12000},
                         {"search": "beam 3", "captions_per_second": 3500}],
            "goals": gpu_check.goals(shapes, training)}


def test_the_gpu_check_judges_its_goals_and_renders_one_row_per_results_file(tmp_path):
    from benchmarks import gpu_check

    assert gpu_check.slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    fast, slow = gpu_report(110_000, 95.0), gpu_report(90_000, None)
    assert fast["goals"]["tokens_per_second"]["met"]
    assert fast["goals"]["tokens_per_second"]["best"]["policy"] == "float32"
    assert fast["goals"]["exact_within_3_minutes"]["met"]
    assert not slow["goals"]["tokens_per_second"]["met"]
    assert not slow["goals"]["exact_within_3_minutes"]["met"]
    assert not gpu_check.goals({"goal_reached_seconds": 200.0}, [])["exact_within_3_minutes"][
        "met"]
    assert "No GPU result is stored yet" in gpu_check.render([])
    paths = []
    for name, report in (("a", fast), ("b", slow)):
        paths.append(tmp_path / f"gpu-{name}.json")
        paths[-1].write_text(json.dumps(report))
    table = gpu_check.render(paths).splitlines()
    assert len(table) == 4
    assert table[2] == ("| NVIDIA H200 | jax 0.10.2 | 48.0 / — / 60.2 | 110,000 (float32, batch "
                        "256) | 12,000 / 3,500 | 95 s | 0.961 | 2026-12-07 |")
    assert "| not within the run |" in table[3]


def test_the_gpu_check_refuses_a_machine_without_a_gpu_and_quick_figures_in_results(capsys):
    from benchmarks import gpu_check

    if gpu_check.backend_and_device()[1] != "cpu":
        pytest.skip("this machine has a GPU")
    assert gpu_check.main([]) == 2
    assert "sees no GPU" in capsys.readouterr().err
    assert gpu_check.main(["--quick"]) == 2
    assert "--quick needs --out" in capsys.readouterr().err
