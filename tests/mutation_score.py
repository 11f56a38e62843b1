"""Mutation score of the modules that decide whether the book's numbers are right (`make mutation`).

    python tests/mutation_score.py            # run mutmut, then write the table into tests/README.md
    python tests/mutation_score.py --again    # re-run only the mutants not caught last time
    python tests/mutation_score.py --report   # only rewrite the table from mutmut's last results

mutmut 3 (a pinned dev dependency, requirements-dev.txt) copies ``utils/`` into ``mutants/``,
changes one thing at a time in the modules named by ``[tool.mutmut] only_mutate`` of
pyproject.toml, and runs the unit tests that reach the changed function. A mutant is *killed*
when a test fails (or it hangs and is stopped: a timeout is caught too), and *survives* when
every test passes. ``[tool.mutation-score]`` of pyproject.toml says which functions count: all
of a module (``"*"``), or, for ``utils/shapes.py``, only the caption checker's, since that
module also draws and writes scenes. Survivors judged equivalent (no input can tell them from
the original) are explained one line each in tests/mutation_equivalents.toml; the report marks
any survivor without an explanation.
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import os
import pathlib
import subprocess
import sys
import tomllib
from collections import Counter

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "tests" / "README.md"
EQUIVALENTS = ROOT / "tests" / "mutation_equivalents.toml"
START, END = "<!-- mutation-score:start -->", "<!-- mutation-score:end -->"
#: How mutmut's exit codes read (mutmut.stats.status_by_exit_code); anything else is suspicious.
STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped",
          36: "timeout", -24: "timeout", 24: "timeout", 152: "timeout", 255: "timeout",
          -11: "segfault", -9: "segfault", None: "not checked"}
CAUGHT = {"killed", "timeout"}


def settings() -> dict:
    """``{module path: [function globs]}`` from ``[tool.mutation-score]`` of pyproject.toml."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return pyproject["tool"]["mutation-score"]["functions"]


def module_name(path: str) -> str:
    return path.removesuffix(".py").replace("/", ".")


def mutant_glob(module: str, function: str) -> str:
    """mutmut's names for the mutants of ``function`` (a name or a glob, ``Class.method`` for a
    method): ``utils.text.x_standardize__mutmut_3``, ``utils.text.xǁVocabularyǁencode__mutmut_3``."""
    if function == "*":
        return f"{module}.x*__mutmut_*"
    if "." in function:
        class_name, method = function.split(".")
        return f"{module}.xǁ{class_name}ǁ{method}__mutmut_*"
    return f"{module}.x_{function}__mutmut_*"


def mutant_globs(functions: dict) -> list[str]:
    return [mutant_glob(module_name(path), name) for path, names in functions.items()
            for name in names]


def run_mutmut(names: list[str]) -> None:
    # mutmut imports the mutated copy under mutants/; a PYTHONPATH pointing at the checkout
    # would hand the tests the original package instead.
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    # Eager tf.functions (tests/conftest.py): no graph traced per mutant, several times faster.
    env.update(BOOK_PROFILE="smoke", BOOK_TESTS_EAGER="1")
    subprocess.run([sys.executable, "-m", "mutmut", "run", *names], cwd=ROOT, env=env, check=True)


def function_of(mutant: str) -> str:
    """``utils.shapes.x_check_caption__mutmut_4`` -> ``check_caption``; a method keeps its class
    (``_Cursor.take_word``)."""
    name = mutant.partition("__mutmut_")[0].rpartition(".")[2]
    return name.removeprefix("x_") if name.startswith("x_") else ".".join(name.split("ǁ")[1:])


def results(functions: dict) -> dict[str, dict[str, str]]:
    """``{module path: {mutant name: status}}`` for the chosen functions' mutants."""
    found = {}
    for path, names in functions.items():
        meta = ROOT / "mutants" / f"{path}.meta"
        if not meta.exists():
            raise SystemExit(f"{meta} is missing: run `make mutation` first")
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        found[path] = {mutant: STATUS.get(code, "suspicious") for mutant, code in codes.items()
                       if any(fnmatch.fnmatchcase(function_of(mutant), name) for name in names)}
    return found


def report(found: dict[str, dict[str, str]], equivalents: dict[str, str]) -> str:
    """The Markdown that goes between the markers of tests/README.md."""
    lines = ["| module | mutants | killed | timeout | survived | no tests | score |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    total = Counter()
    for path, statuses in found.items():
        counts = Counter(statuses.values())
        total.update(counts)
        lines.append(_row(f"`{path}`", counts))
    lines.append(_row("**all**", total))
    survivors = [(path, mutant) for path, statuses in found.items()
                 for mutant, status in sorted(statuses.items(), key=lambda item: _order(item[0]))
                 if status not in CAUGHT]
    lines += ["", f"Survivors ({len(survivors)}), each with why no test can kill it "
                  "(tests/mutation_equivalents.toml):", ""]
    for path, mutant in survivors:
        why = equivalents.get(mutant, "**not explained: a gap in the tests?**")
        lines.append(f"- `{mutant}` ({found[path][mutant]}): {why}")
    return "\n".join(lines)


def _order(mutant: str) -> tuple[str, int]:
    function, _, number = mutant.partition("__mutmut_")
    return function, int(number)


def _row(label: str, counts: Counter) -> str:
    mutants = sum(counts.values())
    caught = counts["killed"] + counts["timeout"]
    score = f"{100 * caught / mutants:.1f}%" if mutants else "-"
    return (f"| {label} | {mutants} | {counts['killed']} | {counts['timeout']} | "
            f"{counts['survived'] + counts['suspicious'] + counts['segfault']} | "
            f"{counts['no tests'] + counts['not checked'] + counts['skipped']} | {score} |")


def write_readme(table: str) -> None:
    text = README.read_text()
    before, _, rest = text.partition(START)
    _, _, after = rest.partition(END)
    README.write_text(f"{before}{START}\n{table}\n{END}{after}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--again", action="store_true",
                        help="re-run only the mutants that were not caught (or not run) last time")
    action.add_argument("--report", action="store_true",
                        help="only rewrite the table from the results of the last run")
    args = parser.parse_args()
    functions = settings()
    if args.again:
        left = [mutant for statuses in results(functions).values()
                for mutant, status in statuses.items() if status not in CAUGHT]
        if left:
            run_mutmut(left)
    elif not args.report:
        run_mutmut(mutant_globs(functions))
    equivalents = tomllib.loads(EQUIVALENTS.read_text()) if EQUIVALENTS.exists() else {}
    table = report(results(functions), equivalents)
    write_readme(table)
    print(table)


if __name__ == "__main__":
    main()
