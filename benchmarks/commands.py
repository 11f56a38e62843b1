"""Time the README's two commands as a reader runs them: in a fresh clone, after `make venv`.

    python -m benchmarks.commands test            # clone HEAD, make venv, time `make test`
    python -m benchmarks.commands test book       # both (`make book`: about 20 minutes more)
    python -m benchmarks.commands test --workdir /tmp/timing   # keep the clone and its .venv/
    python -m benchmarks.commands --update-readme # write the stored times into README.md

Each timing is stored as ``benchmarks/results/commands-<command>.json`` with the machine, its
load average before and after, the commit and pytest's summary line; ``--update-readme``
rewrites the README's quoted times from those files, so the README says what was measured and
where. Setting up ``.venv/`` (pip installing the pins) is left out of the time, as in the README.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import re
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"
COMMANDS = ("test", "book")
#: What the README says about each command, and the text that replaces it.
README_PATTERNS = {
    "test": (re.compile(r"`make test`: [^|]*?(?= \|)"), "`make test`: {duration} ({where})"),
    "book": (re.compile(r"`make book` from a fresh clone: [^|;]*?(?=;| \|)"),
             "`make book` from a fresh clone: {duration} ({where})"),
    "chapters": (re.compile(r"in the `cpu` profile by `make book`: [^|]*?(?= \|)"),
                 "in the `cpu` profile by `make book`: {chapters}"),
}


def machine() -> dict:
    """The machine in words: processor, cores, memory."""
    model = platform.processor() or platform.machine()
    cpuinfo = pathlib.Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = re.findall(r"model name\s*:\s*(.+)", cpuinfo.read_text())
        model = names[0].strip() if names else model
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"processor": model, "cpus": os.cpu_count(), "memory_gib": round(memory, 1),
            "platform": platform.platform(), "python": platform.python_version()}


def fresh_clone(folder: pathlib.Path) -> pathlib.Path:
    """A clone of this checkout's HEAD (committed work only) with its .venv/ set up. A clone
    kept in ``folder`` from an earlier timing loses what that timing changed (`make book`
    executes the chapters in place), is brought to HEAD and cleaned of everything git does not
    track but .venv/ (data, trained runs, the built site), which makes it fresh again without
    installing the pins a second time."""
    clone = folder / "clone"
    if clone.exists():
        subprocess.run(["git", "reset", "--quiet", "--hard"], cwd=clone, check=True)
        subprocess.run(["git", "pull", "--quiet", "--ff-only"], cwd=clone, check=True)
        subprocess.run(["git", "clean", "-xdffq", "-e", ".venv"], cwd=clone, check=True)
    else:
        subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    subprocess.run(["make", "venv"], cwd=clone, check=True, stdout=subprocess.DEVNULL)
    return clone


def time_command(clone: pathlib.Path, command: str) -> dict:
    """Run ``make <command>`` in the clone; its wall time, exit status and last lines."""
    load_start = os.getloadavg()
    started = time.perf_counter()
    done = subprocess.run(["make", command], cwd=clone, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    output = (done.stdout + done.stderr).strip().splitlines()
    summary = next((line.strip("= ") for line in reversed(output)
                    if re.search(r"\d+ (passed|failed)", line)), None)
    return {"command": f"make {command}", "seconds": round(seconds, 1), "exit_status":
            done.returncode, "pytest_summary": summary, "load_average_start": load_start,
            "load_average_end": os.getloadavg(), "slowest": slowest(output),
            "chapters": chapter_seconds(output), "last_lines": output[-5:]}


def chapter_seconds(output: list[str]) -> dict[str, int]:
    """Seconds per chapter from book/execute.py's lines (``make book``): ``{"05_...": 540}``."""
    seconds, chapter = {}, None
    for line in output:
        started = re.match(r"== executing chapters/(\S+)\.ipynb", line)
        if started:
            chapter = started.group(1)
        done = re.match(r"\s+done in (\d+) s", line)
        if done and chapter:
            seconds[chapter] = int(done.group(1))
    return seconds


def slowest(output: list[str], count: int = 10) -> list[str]:
    """The first lines of pytest's ``--durations`` table: ``"12.34s call tests/...::test"``."""
    starts = [i for i, line in enumerate(output) if "slowest" in line and "durations" in line]
    if not starts:
        return []
    rows = output[starts[-1] + 1:]
    return [" ".join(row.split()) for row in rows[:count] if re.match(r"\d+\.\d+s ", row)]


def commit(clone: pathlib.Path) -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=clone,
                          capture_output=True, text=True, check=True).stdout.strip()


def measure(commands: list[str], workdir: pathlib.Path | None) -> None:
    with tempfile.TemporaryDirectory(prefix="book-commands-") as temporary:
        clone = fresh_clone(workdir or pathlib.Path(temporary))
        for command in commands:
            record = {**time_command(clone, command), "machine": machine(), "commit": commit(clone),
                      "date": datetime.date.today().isoformat()}
            path = RESULTS / f"commands-{command}.json"
            path.write_text(json.dumps(record, indent=1) + "\n")
            print(f"make {command}: {record['seconds']:.0f} s, exit {record['exit_status']}, "
                  f"{record['pytest_summary']} -> {path.relative_to(ROOT)}")


def duration(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if minutes else f"{rest} s"


def readme_phrase(command: str, record: dict) -> str:
    if command == "chapters":
        return README_PATTERNS[command][1].format(chapters=", ".join(
            f"chapter {int(name[:2])} {duration(seconds)}"
            for name, seconds in sorted(record["chapters"].items())))
    cores = record["machine"]["cpus"]
    load = record["load_average_start"][0]
    where = (f"measured {record['date']} from a fresh clone on {cores} cores of "
             f"{record['machine']['processor']}, load average {load:.1f} at the start")
    return README_PATTERNS[command][1].format(duration=duration(record["seconds"]), where=where)


def update_readme() -> None:
    text = README.read_text()
    for command, (pattern, _) in README_PATTERNS.items():
        path = RESULTS / f"commands-{'book' if command == 'chapters' else command}.json"
        if not path.exists():
            continue
        record = json.loads(path.read_text())
        if record["exit_status"] != 0:
            raise SystemExit(f"{path.name}: make {command} failed; not quoting its time")
        text, found = pattern.subn(readme_phrase(command, record), text, count=1)
        if not found:
            raise SystemExit(f"README.md no longer quotes a time for make {command}")
    README.write_text(text)
    print(f"updated {README.relative_to(ROOT)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("commands", nargs="*", metavar="{test,book}", help="make targets to time")
    parser.add_argument("--update-readme", action="store_true",
                        help="write the stored times into README.md")
    parser.add_argument("--workdir", type=pathlib.Path,
                        help="keep the clone (and its .venv/) here for the next timing")
    args = parser.parse_args(argv)
    unknown = set(args.commands) - set(COMMANDS)
    if unknown:
        parser.error(f"unknown commands {sorted(unknown)}; choose from {', '.join(COMMANDS)}")
    if args.commands:
        measure(args.commands, args.workdir)
    if args.update_readme:
        update_readme()
    if not args.commands and not args.update_readme:
        parser.error("name a command to time, or --update-readme")
    return 0


if __name__ == "__main__":
    sys.exit(main())
