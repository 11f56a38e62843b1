"""The book's command line: ``python -m utils <command> [options]``.

Commands:

``shapes``
    Write the Shapes captioning dataset, e.g.
    ``python -m utils shapes --out data/shapes --num-images 10000 --seed 0``. ``--overwrite``
    replaces only a dataset folder this program wrote (utils.shapes.write_dataset says how it
    tells); a folder holding anything else is never deleted.
``train``
    Train a captioner on the profile's Shapes dataset and export it to ``RUN/captioner``, e.g.
    ``python -m utils train --dataset shapes --profile cpu --run runs/shapes-cpu --seed 0``;
    the same command again continues an interrupted run (or only re-exports a finished one).
``evaluate``
    Score an exported captioner on a split, e.g.
    ``python -m utils evaluate --run runs/shapes-cpu --split test --beam-size 3``; the scores
    are printed and written to ``RUN/scores-<split>-beam<K>.json``. ``--data DIR`` takes the
    split from any Karpathy-layout folder (``dataset_*.json``) instead of the run's own data,
    and writes ``RUN/scores-<DIR's name>-<sha256 of its JSON, 8 digits>-<split>-beam<K>.json``.
    Every report records the path and sha256 of the JSON it scored.
``caption``
    Caption image files, e.g. ``python -m utils caption --run runs/shapes-cpu a.png b.jpg``;
    ``--attention-out DIR`` also saves one attention figure per image. Every readable image is
    captioned; each unreadable one gets its own ``error: ...`` line, and the exit status is 1.

Every command that reads or writes a run folder names it ``--run DIR`` (``train --out`` and
``caption --model``, the old spellings, still work and print a note). Each command's ``--help``
ends with an example. A mistake in the input ends the program with one ``error: ...`` line on stderr and a non-zero
exit status, never a traceback. To add a command, write an ``_add_<name>_command`` function and
list it in ``_COMMANDS``.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import pathlib
import re
import sys
from collections.abc import Callable, Sequence


#: Images the caption command decodes at once.
CAPTION_BATCH = 250


class _OneLineErrorParser(argparse.ArgumentParser):
    """An argument parser that reports bad input as a single ``error:`` line (exit status 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {message}\n")


class _DeprecatedAlias(argparse.Action):
    """A former spelling of an option: stores where the new one does and says to use that."""

    def __init__(self, option_strings, dest, new_flag: str, **kwargs):
        self.new_flag = new_flag
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"note: {option_string} is deprecated; use {self.new_flag}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def _add_command(commands: argparse._SubParsersAction, name: str, example: str,
                 **kwargs) -> argparse.ArgumentParser:
    """A subcommand whose ``--help`` ends with ``example`` (a command line that works)."""
    return commands.add_parser(name, epilog=f"example:\n  {example}",
                               formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)


def _add_run_argument(parser: argparse.ArgumentParser, help_text: str,
                      old_flag: str | None = None) -> None:
    """``--run DIR``, the run folder, spelt alike in every command; ``old_flag`` is a former
    spelling, kept as a hidden alias. Required: :func:`main` checks it (argparse cannot require
    one of two spellings of the same option)."""
    parser.add_argument("--run", dest="run_dir", type=pathlib.Path, default=None, metavar="DIR",
                        help=f"{help_text} (required)")
    if old_flag is not None:
        parser.add_argument(old_flag, dest="run_dir", type=pathlib.Path, action=_DeprecatedAlias,
                            new_flag="--run", help=argparse.SUPPRESS)
    parser.set_defaults(needs_run=True)


def _positive_int(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be zero or a positive integer, got {value}")
    return value


#: The largest seed TensorFlow, Keras and NumPy all accept (utils.setup seeds all three).
MAX_SEED = 2**32 - 1


def _seed(text: str) -> int:
    value = _int(text)
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(
            f"must be between 0 and {MAX_SEED} (2**32 - 1), got {value}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _add_shapes_command(commands: argparse._SubParsersAction) -> None:
    parser = _add_command(
        commands, "shapes", "python -m utils shapes --out data/my-shapes --num-images 1000 --seed 0",
        help="write the Shapes captioning dataset",
        description="Write the Shapes captioning dataset (PNG images + Karpathy-style JSON).",
    )
    parser.add_argument("--out", type=pathlib.Path, required=True, help="folder to write")
    parser.add_argument("--num-images", type=_positive_int, required=True, help="images in all")
    parser.add_argument("--seed", type=_non_negative_int, required=True, help="random seed")
    parser.add_argument("--image-size", type=_positive_int, default=64, help="pixels per side")
    parser.add_argument(
        "--overwrite", action="store_true",
        help="replace a Shapes dataset this program wrote in --out (never any other files)"
    )
    parser.set_defaults(run=_run_shapes)


def _run_shapes(args: argparse.Namespace) -> None:
    from . import shapes  # imported late so `--help` stays instant

    json_path = shapes.write_dataset(
        args.out,
        args.num_images,
        args.seed,
        args.image_size,
        overwrite=args.overwrite,
        progress=sys.stderr.isatty(),
    )
    counts = ", ".join(f"{split} {n}" for split, n in shapes.split_sizes(args.num_images).items())
    print(f"shapes: {args.num_images} images ({counts}) in {json_path}")


# --- train / evaluate / caption ------------------------------------------------------------

RUN_SETTINGS = "run-settings.json"  # what `train` was asked for; a rerun must ask the same
EXPORT_NAME = "captioner"  # the export folder inside a run folder
TRAINING_NAME = "training"  # best weights, backup and run.json of utils.train.fit


def _quiet_tensorflow() -> None:
    # TensorFlow's C++ start-up lines would bury the one-line output of these commands. Without
    # TensorFlow (KERAS_BACKEND=jax or torch) there is nothing to quieten.
    from . import import_tensorflow

    try:
        import_tensorflow()
    except ModuleNotFoundError as error:
        if error.name != "tensorflow":
            raise


def _add_train_command(commands: argparse._SubParsersAction) -> None:
    from .profile import DATASET_NAMES, PROFILE_NAMES

    parser = _add_command(
        commands, "train", "python -m utils train --profile cpu --run runs/shapes-cpu",
        help="train a captioner and export it",
        description="Train a captioner (utils.train.fit) and export it to RUN/captioner. "
                    "Running the same command again continues an interrupted run.",
    )
    parser.add_argument("--dataset", choices=DATASET_NAMES, default="shapes",
                        help="dataset to train on (only shapes is wired up yet)")
    parser.add_argument("--profile", choices=("auto", *PROFILE_NAMES), default=None,
                        help="size profile (default: $BOOK_PROFILE, else auto)")
    _add_run_argument(parser, "run folder to train in", old_flag="--out")
    parser.add_argument("--seed", type=_seed, default=0, help="random seed")
    parser.add_argument("--no-jit", action="store_true",
                        help="run the decoder without XLA: starts faster, trains slower per step "
                             "(worth it only for very short runs)")
    parser.add_argument("--decoder", choices=("soft", "show_and_tell", "show_and_tell_grid", "hard"),
                        default="soft",
                        help="soft attention (default), the Show and Tell baseline without "
                             "attention (the image as the first input, its regions averaged, or "
                             "side by side with show_and_tell_grid), or hard attention")
    parser.set_defaults(run=_run_train,
                        interrupted="run the same command again to continue from the last epoch")


def _run_train(args: argparse.Namespace) -> None:
    if args.dataset != "shapes":
        raise ValueError(f"only the shapes dataset is wired up yet, not {args.dataset} "
                         "(use --dataset shapes)")
    from .profile import get_profile

    _quiet_tensorflow()
    profile = get_profile(args.profile, dataset=args.dataset)
    if args.no_jit:
        profile = profile.replace(jit_compile=False)
    settings = {"dataset": args.dataset, "profile": profile.name, "seed": args.seed,
                "jit": profile.jit_compile}
    if args.decoder != "soft":  # runs of the default decoder keep their settings file as it was
        settings["decoder"] = args.decoder
    out = args.run_dir
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(20, "Not a directory", str(out))
    settings_path = out / RUN_SETTINGS
    if settings_path.exists():
        earlier = _earlier_settings(settings_path)
        if earlier != settings:
            described = ", ".join(f"{k} {v}" for k, v in earlier.items())
            raise ValueError(f"{out} holds a run started with {described}; give another --run "
                             "or delete that folder")
    elif out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty and holds no run of `train`; give another --run")
    out.mkdir(parents=True, exist_ok=True)
    settings_path.write_text(json.dumps(settings))

    from . import datasets, setup, train
    from .export import save_captioner
    from .captioner import captioner_from_profile

    setup(profile.name, seed=args.seed)
    vocabulary, splits = train.prepare_shapes(profile, args.seed)
    with contextlib.redirect_stdout(io.StringIO()):  # already said "reusing it" once
        data = datasets.shapes_dataset(profile, seed=args.seed)
    training_dir = out / TRAINING_NAME
    options = {"decoder": args.decoder}
    model = train.load_finished_run(training_dir, profile, vocabulary, **options)
    if model is None:
        model = captioner_from_profile(profile, len(vocabulary), **options)
        train.fit(model, splits["train"], splits["val"], vocabulary, profile, training_dir,
                  seed=args.seed, verbose=2)
    else:
        print(f"train: {training_dir} holds a finished run; exporting it again")
    best = json.loads((training_dir / "best.weights.json").read_text())  # from CaptionScore
    folder = save_captioner(model, vocabulary, out / EXPORT_NAME, image_size=profile.image_size,
                            profile=profile, extra={**settings, "data": str(data.resolve()),
                                                    "best_epoch": best["epoch"],
                                                    "best_val_score": best["best"]})
    key = "exact-caption rate" if splits["val"].scenes is not None else "CIDEr-D"
    print(f"train: captioner exported to {folder} (best epoch {best['epoch']}, validation "
          f"{key} {best['best']:.3f})")


def _earlier_settings(path: pathlib.Path) -> dict:
    """The settings a run folder was started with (its run-settings.json), checked to be a JSON
    object so that a damaged file is named rather than misread."""
    advice = "give another --out or delete that folder"
    try:
        earlier = json.loads(path.read_text())
    except ValueError as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"{path} is not valid JSON ({error}); {advice}") from None
    if not isinstance(earlier, dict):
        found = json.dumps(earlier)
        raise ValueError(f"{path} should hold a JSON object of settings, found "
                         f"{found if len(found) <= 40 else found[:37] + '...'}; {advice}")
    return earlier


def _add_evaluate_command(commands: argparse._SubParsersAction) -> None:
    parser = _add_command(
        commands, "evaluate",
        "python -m utils evaluate --run runs/shapes-cpu --split test --beam-size 3",
        help="score an exported captioner on a split",
        description="Caption a split with an exported captioner and score it (BLEU, METEOR, "
                    "ROUGE-L, CIDEr; on Shapes also the exact/correct/complete rates).",
    )
    _add_run_argument(parser, "run folder of `train` (or an export folder)")
    parser.add_argument("--split", required=True, help="split to score, e.g. test")
    parser.add_argument("--data", type=pathlib.Path, default=None,
                        help="Karpathy-layout folder with a dataset_*.json (default: the run's "
                             "own Shapes dataset)")
    parser.add_argument("--beam-size", type=_positive_int, default=1,
                        help="1: greedy decoding (default), more: beam search")
    parser.set_defaults(run=_run_evaluate)


def _dataset_json(args: argparse.Namespace, metadata: dict) -> pathlib.Path:
    """The Karpathy JSON of ``--data``, or of the Shapes dataset the run was trained on."""
    if args.data is not None:
        if not args.data.is_dir():
            raise FileNotFoundError(2, "No such folder", str(args.data))
        found = sorted(args.data.glob("dataset_*.json"))
        if len(found) != 1:
            what = "no dataset_*.json" if not found else f"{len(found)} dataset_*.json files"
            raise FileNotFoundError(f"{args.data} holds {what}; --data needs a folder in the "
                                    "Karpathy layout with exactly one")
        return found[0]
    extra = metadata.get("extra", {})
    if extra.get("dataset", "shapes") != "shapes" or not metadata.get("profile"):
        raise ValueError("this export does not say which Shapes dataset it was trained on; "
                         "give the data with --data DIR")
    if extra.get("data") and pathlib.Path(extra["data"]).is_file():
        return pathlib.Path(extra["data"])  # the very file it was trained on
    from . import datasets
    from .profile import get_profile

    profile = get_profile(metadata["profile"], dataset="shapes")
    return datasets.shapes_dataset(profile, seed=int(extra.get("seed", 0)))


def _run_evaluate(args: argparse.Namespace) -> None:
    from . import datasets
    from .export import check_export

    _quiet_tensorflow()
    folder, metadata, _ = check_export(args.run_dir)  # no TensorFlow yet: bad input fails fast
    json_path = _dataset_json(args, metadata)
    records = datasets.load_karpathy(json_path)
    chosen = datasets.split(records, args.split)
    if not chosen:
        names = sorted({record.split for record in records})
        raise ValueError(f"unknown split {args.split!r}; the data has: {', '.join(names)}")
    pixels = datasets.load_pixels(chosen, metadata["image_size"])

    from types import SimpleNamespace

    from .checksums import file_sha256
    from .evaluation import score_split
    from .export import load_captioner

    loaded = load_captioner(folder)
    scenes = [record.scene for record in chosen]
    split = SimpleNamespace(
        pixels=pixels, scenes=scenes if all(scenes) else None,
        references=[list(r.raw_captions) or [" ".join(c) for c in r.captions] for r in chosen])
    report = score_split(loaded.model, split, loaded.vocabulary, loaded.max_length,
                         beam_size=args.beam_size).report
    informative = report.get("informativeness")
    # the headline numbers; the per-scene rates and grounding stay with the Python API
    scores = {k: v for k, v in report.items() if not isinstance(v, dict)}
    data_sha256 = file_sha256(json_path)
    report = {**scores, "images": len(chosen), "split": args.split, "beam_size": args.beam_size,
              "export": str(folder), "data": str(json_path.resolve()), "data_sha256": data_sha256}
    if informative is not None:
        report["informativeness"] = informative
    # Beside the export (in the run folder), never inside it.
    out = folder.parent / _report_name(args, data_sha256)
    partial = out.with_name(f".{out.name}.partial")
    partial.write_text(json.dumps(report, indent=1) + "\n")
    os.replace(partial, out)
    print(f"evaluate: {len(chosen)} {args.split} images, beam {args.beam_size}")
    print("  ".join(f"{name} {value:.3f}" for name, value in scores.items()))
    if informative is not None:
        print(_relations_line(informative))
    print(f"scores written to {out}")


def _relations_line(informative: dict) -> str:
    """One line of :func:`utils.evaluation.informativeness`: do the captions say where things
    are, as often as the references do, and truly?"""
    parts = [f"{scenes}: {shares['captions with a relation']:.1%} state a relation "
             f"(references {shares['references with a relation']:.1%})"
             for scenes, shares in informative.items() if scenes != "relations"]
    stated = informative["relations"]
    parts.append(f"{stated['stated']} relations stated, {stated['true']:.1%} of them true")
    return "relations: " + "; ".join(parts)


def _report_name(args: argparse.Namespace, data_sha256: str) -> str:
    """``scores-<split>-beam<K>.json`` for the run's own data; for ``--data DIR`` also DIR's name
    and the start of its JSON's sha256, so that scores of other data never replace those."""
    parts = [args.split, f"beam{args.beam_size}"]
    if args.data is not None:
        parts = [args.data.resolve().name, data_sha256[:8], *parts]
    # The split's name comes from the data file: no character of it may reach a path.
    return "scores-" + "-".join(re.sub(r"[^\w.]+", "_", part) for part in parts) + ".json"


def _add_caption_command(commands: argparse._SubParsersAction) -> None:
    parser = _add_command(
        commands, "caption",
        "python -m utils caption --run runs/shapes-cpu photo.jpg --attention-out attention/",
        help="caption image files with an exported captioner",
        description="Print one caption per image (JPEG or PNG, any size).",
    )
    _add_run_argument(parser, "run folder of `train` (or an export folder)", old_flag="--model")
    parser.add_argument("images", nargs="+", type=pathlib.Path, metavar="IMAGE")
    parser.add_argument("--beam-size", type=_positive_int, default=1,
                        help="1: greedy decoding (default), more: beam search")
    parser.add_argument("--attention-out", type=pathlib.Path, default=None, metavar="DIR",
                        help="also save a per-word attention figure (PNG) per image here")
    parser.set_defaults(run=_run_caption)


def _run_caption(args: argparse.Namespace) -> int:
    """Caption every readable image; name each unreadable one on stderr (status 1 if any)."""
    from .export import check_export
    from .images import read_images

    _quiet_tensorflow()
    folder, metadata, _ = check_export(args.run_dir)
    if args.attention_out is not None:
        if args.attention_out.exists() and not args.attention_out.is_dir():
            raise NotADirectoryError(20, "Not a directory", str(args.attention_out))
    pixels, kept, errors = read_images(args.images, metadata["image_size"])  # no TensorFlow yet
    for error in errors:
        print(f"error: {_one_line(error)}", file=sys.stderr)
    if not kept:
        return 1

    from .export import load_captioner
    from .decoding import caption_images

    readable = [args.images[position] for position in kept]
    loaded = load_captioner(folder)
    # One batch is searched once, and eagerly that is faster than tracing its graph first.
    captions, attention = caption_images(loaded.model, pixels, loaded.vocabulary,
                                         loaded.max_length, beam_size=args.beam_size,
                                         batch_size=CAPTION_BATCH,
                                         compiled=len(pixels) > CAPTION_BATCH)
    for path, text in zip(readable, captions):
        print(f"{path}: {text or '(no words)'}")
    if args.attention_out is not None:
        written = _save_attention(args.attention_out, readable, pixels, captions, attention,
                                  loaded.max_length)
        print(f"attention figures: {len(written)} in {args.attention_out}")
    return 1 if errors else 0


def _save_attention(folder: pathlib.Path, paths, pixels, captions, attention, max_length: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .viz import show_attention

    folder.mkdir(parents=True, exist_ok=True)
    stems = [path.stem for path in paths]
    written = []
    for index, (path, text) in enumerate(zip(paths, captions)):
        words = (text.split() + ["<end>"])[:max_length]
        name = path.stem if stems.count(path.stem) == 1 else f"{index:03d}-{path.stem}"
        target = folder / f"{name}.attention.png"
        figure = show_attention(pixels[index], words, attention[index][: len(words)])
        figure.suptitle(text, fontsize=10)
        figure.savefig(target)
        plt.close(figure)
        written.append(target)
    return written


_COMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    _add_shapes_command, _add_train_command, _add_evaluate_command, _add_caption_command)


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m utils`` with one subcommand per entry of ``_COMMANDS``."""
    parser = _OneLineErrorParser(prog="python -m utils", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_command in _COMMANDS:
        add_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return the exit status (0 success, 1 failed, 2 bad usage, 130 ^C)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "needs_run", False) and args.run_dir is None:
        parser.exit(2, f"error: {args.command} needs --run DIR (the run folder)\n")
    try:
        status = args.run(args)  # None, or the status of a command that reports its own errors
    except (ValueError, OSError) as error:
        # Expected failures (bad values, existing folders, unwritable paths) are the user's to
        # fix, so they get a sentence rather than a traceback.
        print(f"error: {_one_line(error)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        note = getattr(args, "interrupted", "nothing was left behind")
        print(f"error: interrupted; {note}", file=sys.stderr)
        return 130
    return status or 0


def _one_line(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror and error.filename:
        return f"{error.strerror}: {error.filename}"
    return " ".join(str(error).split())


def _exit(status: int) -> None:
    """End the program with ``status``. Once TensorFlow is loaded, its teardown at interpreter
    exit takes about a second and does nothing a finished command needs (every file it wrote is
    closed), so the streams are flushed and the process ends at once."""
    if "tensorflow" not in sys.modules:
        sys.exit(status)
    import logging

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    _exit(main())
