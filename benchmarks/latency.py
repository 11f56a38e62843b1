"""Caption latency as a user meets it: ``python -m utils caption`` on one image, cold and warm.

    python -m benchmarks.latency                 # the cpu profile's captioner, 5 cold starts
    python -m benchmarks.latency --run RUN       # an exported captioner of your own

*Cold* is a new process captioning one image: the interpreter, the imports, reading the export,
loading the Keras model, and the first caption. *Warm* is a second image captioned in the same
process, as a notebook or a server would: eagerly, as the command decodes, and through the
compiled graph that ``utils.decoding.caption_images`` uses by default (traced on its first call). The cold start is
timed twice: whole, as the command (``python -m utils caption --run RUN IMAGE``, wall clock of
the process), and broken into phases by a child process that runs the command's own steps
(:func:`utils.__main__._run_caption`'s calls, in its order) with a clock between them. Without
``--run`` the captioner is the ``cpu`` profile's model with untrained weights (latency does not
depend on what the weights hold), exported to a temporary folder, and the images are Shapes
images. Writes ``benchmarks/results/latency-cpu.json``.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"

#: The phases of a cold caption, in the order the command runs them.
PHASES = ("python starts", "import utils", "import TensorFlow", "read export and image",
          "import Keras and the model code", "load the model", "first caption")


def make_export(folder: pathlib.Path) -> tuple[pathlib.Path, list[pathlib.Path]]:
    """The ``cpu`` profile's captioner, untrained, exported to ``folder/captioner``, and two
    Shapes images to caption."""
    import keras
    import numpy as np

    import utils
    from utils import datasets, export, shapes, text
    from utils.captioner import captioner_from_profile

    profile = utils.setup("cpu")
    records = datasets.load_karpathy(shapes.write_dataset(folder / "shapes", 20, seed=0))
    images = [record.path for record in records[:2]]
    vocabulary = text.Vocabulary.from_captions(c for record in records for c in record.captions)
    keras.utils.set_random_seed(0)
    model = captioner_from_profile(profile, len(vocabulary))
    pixels = export.load_images(images[:1], profile.image_size)
    model((pixels, np.full((1, 1), vocabulary.start_id, np.int32)))
    run = export.save_captioner(model, vocabulary, folder / "captioner",
                                image_size=profile.image_size, profile=profile)
    return run, images


def child(run: str, first: str, second: str) -> dict:
    """In a fresh process: the caption command's steps, timed phase by phase, then a warm one."""
    marks = [("import utils", time.perf_counter())]
    import utils.__main__ as cli
    from utils.export import check_export
    from utils.images import read_images

    marks.append(("import TensorFlow", time.perf_counter()))
    cli._quiet_tensorflow()
    marks.append(("read export and image", time.perf_counter()))
    _, metadata, _ = check_export(run)
    pixels, _, _ = read_images([first], metadata["image_size"])
    marks.append(("import Keras and the model code", time.perf_counter()))
    from utils.decoding import caption_images
    from utils.export import load_captioner

    marks.append(("load the model", time.perf_counter()))
    loaded = load_captioner(run)
    marks.append(("first caption", time.perf_counter()))
    # as the command decodes one batch: eagerly (utils.__main__._run_caption)
    caption_images(loaded.model, pixels, loaded.vocabulary, loaded.max_length, compiled=False)
    marks.append(("end", time.perf_counter()))
    phases = {name: marks[i + 1][1] - marks[i][1] for i, (name, _) in enumerate(marks[:-1])}

    def another(compiled: bool) -> float:
        started = time.perf_counter()
        again, _, _ = read_images([second], metadata["image_size"])
        caption_images(loaded.model, again, loaded.vocabulary, loaded.max_length,
                       compiled=compiled)
        return time.perf_counter() - started

    eager = [another(False) for _ in range(5)]
    trace = another(True)  # the library's default: the graph, traced on its first call
    return {"phases_s": phases, "warm_eager_s": eager, "compiled_first_s": trace,
            "warm_compiled_s": [another(True) for _ in range(5)]}


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, cwd=ROOT)
    return time.perf_counter() - started


def measure(run: pathlib.Path, images: list[pathlib.Path], repeats: int) -> dict:
    python = [sys.executable]
    start_up = [timed([*python, "-c", "pass"]) for _ in range(repeats)]
    command = [*python, "-m", "utils", "caption", "--run", str(run), str(images[0])]
    whole = [timed(command) for _ in range(repeats)]
    children = []
    for _ in range(repeats):
        started = time.perf_counter()
        done = subprocess.run([*python, "-m", "benchmarks.latency", "--child", str(run),
                               str(images[0]), str(images[-1])],
                              check=True, capture_output=True, text=True, cwd=ROOT)
        result = json.loads(done.stdout.strip().splitlines()[-1])
        result["process_s"] = time.perf_counter() - started
        children.append(result)
    median = statistics.median
    phases = {"python starts": median(start_up)}
    phases.update({name: median(c["phases_s"][name] for c in children) for name in PHASES[1:]})
    return {"cold_command_s": median(whole), "cold_command_samples_s": whole,
            "cold_phases_s": phases, "cold_phases_sum_s": sum(phases.values()),
            "warm_eager_s": median(w for c in children for w in c["warm_eager_s"]),
            "compiled_first_s": median(c["compiled_first_s"] for c in children),
            "warm_compiled_s": median(w for c in children for w in c["warm_compiled_s"]),
            "repeats": repeats}


def render(report: dict) -> str:
    """benchmarks/README.md's table of a stored result."""
    result = report["results"]
    lines = ["| `python -m utils caption --run RUN IMAGE`, one image | seconds |", "|---|---:|"]
    lines += [f"| cold: {name} | {seconds:.2f} |"
              for name, seconds in result["cold_phases_s"].items()]
    lines += [f"| cold: the phases together | {result['cold_phases_sum_s']:.2f} |",
              f"| cold: the command, timed whole | {result['cold_command_s']:.2f} |",
              "| warm: one more image in the same process, eagerly as the command decodes | "
              f"{result['warm_eager_s']:.3f} |",
              "| warm: the first image through the compiled graph (the library's default), "
              f"tracing it | {result['compiled_first_s']:.2f} |",
              f"| warm: every image after that | {result['warm_compiled_s']:.3f} |"]
    machine = report["machine"]
    return ("\n".join(lines) + f"\n\n`results/latency-cpu.json`, written by "
            f"`python -m benchmarks.latency` on {report['date']} ({machine['cpus']} CPU cores, "
            f"TensorFlow {machine['tensorflow']}): medians of {result['repeats']} cold starts; "
            "each warm figure reads and captions a second image after the first. The command "
            "decodes a single batch eagerly (`compiled=False`): tracing the search's graph "
            "costs more than the eager search it would replace, and the process ends before "
            "the graph could be used again; it also ends without TensorFlow's teardown "
            "(`utils.__main__._exit`).\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=pathlib.Path, help="an exported captioner (default: "
                        "the cpu profile's model, untrained, exported to a temporary folder)")
    parser.add_argument("--images", type=pathlib.Path, nargs=2, metavar="IMAGE")
    parser.add_argument("--repeats", type=int, default=5, help="cold starts timed")
    parser.add_argument("--out", type=pathlib.Path, default=RESULTS / "latency-cpu.json")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(*args.child)))
        return 0
    from benchmarks.decoders import write_report

    with tempfile.TemporaryDirectory() as temporary:
        if args.run is None:
            run, images = make_export(pathlib.Path(temporary))
        else:
            run, images = args.run, args.images
            if not images:
                parser.error("--run needs --images A B")
        result = measure(run, images, args.repeats)
    print(json.dumps(result, indent=1))
    write_report(args.out, "latency", "cpu", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
