"""Run the performance suite: the book's fast path against the tutorial-style reference.

    python -m benchmarks                   # full run (about 30 minutes on 2 CPU cores)
    python -m benchmarks --quick --out F   # a short run (under 3 minutes on 2 cores)
    python -m benchmarks --smoke --out F   # seconds: tiny sizes, for the tests
    python -m benchmarks --only training decoding   # re-run some groups, keep the others
    python -m benchmarks --table           # print the README's table from results/suite-*.json
    python -m benchmarks --update-readme   # write it, and every other stored figure, into
                                           # benchmarks/README.md (benchmarks/report.py)

The output is a JSON list of ``{"name", "unit", "baseline", "fast", "ratio", ...}`` records;
``ratio > 1`` means the fast path wins. See benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
RESULTS = HERE / "results"
README = HERE / "README.md"


def stored_results() -> list[pathlib.Path]:
    """The suite's stored results files, ``results/suite-*.json``."""
    return sorted(RESULTS.glob("suite-*.json"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="a short run (under 3 minutes)")
    size.add_argument("--smoke", action="store_true", help="tiny sizes, seconds (tests)")
    parser.add_argument("--out", type=pathlib.Path,
                        help="results file (default: benchmarks/results/suite-DEVICE-MODE.json)")
    parser.add_argument("--only", nargs="+", metavar="GROUP",
                        help="run only these groups: peak training decoding features pipeline "
                             "quality")
    parser.add_argument("--table", action="store_true",
                        help="print the table of the stored results and exit")
    parser.add_argument("--update-readme", action="store_true",
                        help="write the table of the stored results into benchmarks/README.md")
    args = parser.parse_args(argv)
    from . import suite

    if args.table or args.update_readme:
        table = suite.render_table(stored_results())
        if args.update_readme:
            from . import report

            text = suite.readme_with_table(README.read_text(), table)
            README.write_text(report.with_blocks(suite.with_findings(text, stored_results())))
            print(f"updated {README}")
        else:
            print(table)
        return 0
    groups = tuple(args.only or suite.GROUPS)
    unknown = set(groups) - set(suite.GROUPS)
    if unknown:
        parser.error(f"unknown groups {sorted(unknown)}; choose from {suite.GROUPS}")
    from utils import import_tensorflow

    import_tensorflow()  # quietly, before the suite imports TensorFlow
    mode = suite.MODES["smoke" if args.smoke else "quick" if args.quick else "full"]
    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    result = suite.run_suite(mode, groups, log=log)
    records = suite.to_json_list(result)
    suite.check_records(records)
    out = args.out or RESULTS / f"suite-{result['run']['device']}-{mode.name}.json"
    if args.only and out.exists():  # re-running some groups: keep the file's other records
        kept = [item for item in json.loads(out.read_text()) if item["group"] not in groups]
        records = sorted(kept + records, key=lambda item: suite.GROUPS.index(item["group"]))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(records, indent=1) + "\n")
    for item in result["records"]:
        ratio = "" if item["ratio"] is None else f"  {item['ratio']:.2f}x"
        print(f"{item['sizes']:>12} | {item['name']}: {item['baseline']} -> {item['fast']} "
              f"{item['unit']}{ratio}")
    print(f"wrote {out} ({result['run']['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
