#!/usr/bin/env bash
# Build the HTML book into book/_build/html from the notebooks' stored outputs.
#
#   PYTHON=.venv/bin/python bash book/build.sh      (from the repository root; `make site` does this)
#
# 1. MathJax 3 is taken from the npm package mathjax@3.2.2 (checked against a pinned sha256) and
#    unpacked into book/_mathjax/mathjax/, once; the pages then load it from _static/, so the
#    formulas render without the internet. Without npm or its registry the site falls back to
#    the MathJax CDN, and says so.
# 2. jupyter-book builds the repository root with book/_config.yml and book/_toc.yml, from
#    scratch (--all), treating every warning (a broken link, a missing citation) as an error.
# 3. The chapters' Colab badges load their image from colab.research.google.com; in the built
#    pages they load the copy in book/_static/ instead, so the site shows them offline too.
set -euo pipefail

PYTHON="${PYTHON:-python3}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

MATHJAX_VERSION=3.2.2
MATHJAX_SHA256=1b9c0a1c44df864e915690558e72adb9cc5203360daefd385084ced3b6c64c09
MATHJAX_DIR=book/_mathjax            # html_static_path in book/_config.yml
MATHJAX_JS="$MATHJAX_DIR/mathjax/tex-mml-chtml.js"
CONFIG=book/_config.yml
OUTPUT_DIR=book/_build/html

# jupyter-book lives next to $PYTHON (in the same virtual environment); do not resolve
# symlinks, a venv's python is usually a link to the system interpreter.
python_path="$(command -v "$PYTHON" || true)"
if [[ -z "$python_path" ]]; then
    echo "build.sh: PYTHON=$PYTHON not found; run \`make venv\` or set PYTHON=/path/to/python" >&2
    exit 1
fi
JUPYTER_BOOK="$(dirname "$python_path")/jupyter-book"
if [[ ! -x "$JUPYTER_BOOK" ]]; then
    echo "build.sh: $JUPYTER_BOOK not found; install the pinned tools with" \
         "\`$PYTHON -m pip install -r requirements.txt\`" >&2
    exit 1
fi

fetch_mathjax() {
    # Unpack only what the pages load: the combined TeX+MathML -> CommonHTML component, its
    # fonts, the TeX extensions it autoloads (\boldsymbol, \color, ...) and the menu code it
    # loads on demand. Prints one line saying what went wrong, and returns 1, on any failure.
    command -v npm >/dev/null 2>&1 || { echo "npm is not installed"; return 1; }
    local tmp tarball digest
    tmp="$(mktemp -d)"
    tarball="$tmp/mathjax-$MATHJAX_VERSION.tgz"
    # Bounded retries and timeout: without a network, fail in seconds rather than minutes.
    if ! (cd "$tmp" && npm pack --loglevel=error --fetch-retries=1 --fetch-timeout=60000 \
            "mathjax@$MATHJAX_VERSION" >npm.log 2>&1); then
        echo "npm pack mathjax@$MATHJAX_VERSION failed: $(grep -m1 'FetchError' "$tmp/npm.log" \
            || grep -m1 -E 'npm (error|ERR!)' "$tmp/npm.log" || tail -n1 "$tmp/npm.log")"
        rm -rf "$tmp"; return 1
    fi
    local hash_file='import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())'
    digest="$("$PYTHON" -c "$hash_file" "$tarball")" \
        || { echo "could not hash $tarball"; rm -rf "$tmp"; return 1; }
    if [[ "$digest" != "$MATHJAX_SHA256" ]]; then
        echo "mathjax-$MATHJAX_VERSION.tgz has sha256 $digest, expected $MATHJAX_SHA256"
        rm -rf "$tmp"; return 1
    fi
    mkdir -p "$tmp/staged/mathjax" \
        && tar -xzf "$tarball" -C "$tmp" package/LICENSE package/es5/tex-mml-chtml.js \
            package/es5/output package/es5/input/tex/extensions package/es5/ui \
        && mv "$tmp"/package/es5/* "$tmp/package/LICENSE" "$tmp/staged/mathjax/" \
        || { echo "could not unpack $tarball"; rm -rf "$tmp"; return 1; }
    # Move into place in one step, so an interrupted fetch never leaves half a MathJax behind.
    rm -rf "$MATHJAX_DIR" && mv "$tmp/staged" "$MATHJAX_DIR" \
        || { echo "could not move MathJax into $MATHJAX_DIR"; rm -rf "$tmp"; return 1; }
    rm -rf "$tmp"
}

if [[ ! -f "$MATHJAX_JS" ]]; then
    echo "build.sh: fetching MathJax $MATHJAX_VERSION from npm into $MATHJAX_DIR/ ..."
    if ! reason="$(fetch_mathjax)"; then
        echo "build.sh: WARNING: no local MathJax ($reason); the site will load MathJax from" \
             "its CDN, so offline the math shows as raw TeX. Fix: make npm and its registry" \
             "reachable and rerun (or unpack mathjax@$MATHJAX_VERSION's es5/ into $MATHJAX_DIR/mathjax/)." >&2
        # The same configuration without the local MathJax: Sphinx's default (the CDN) applies.
        mkdir -p book/_build
        CONFIG=book/_build/_config.cdn-mathjax.yml
        "$PYTHON" - book/_config.yml "$CONFIG" <<'PY'
import sys

import yaml

with open(sys.argv[1], encoding="utf-8") as source:
    config = yaml.safe_load(source)
sphinx_config = config["sphinx"]["config"]
sphinx_config.pop("mathjax_path", None)
sphinx_config["html_static_path"] = [
    path for path in sphinx_config.get("html_static_path", []) if path != "book/_mathjax"
]
with open(sys.argv[2], "w", encoding="utf-8") as target:
    yaml.safe_dump(config, target, allow_unicode=True, sort_keys=False)
PY
    fi
fi

start=$SECONDS
"$JUPYTER_BOOK" build . --config "$CONFIG" --toc book/_toc.yml --path-output book \
    --all -W -n --keep-going
if [[ ! -f "$OUTPUT_DIR/index.html" ]]; then
    echo "build.sh: $OUTPUT_DIR/index.html was not written" >&2
    exit 1
fi
"$PYTHON" - "$OUTPUT_DIR" <<'PY'
import pathlib
import sys

REMOTE = "https://colab.research.google.com/assets/colab-badge.svg"
site = pathlib.Path(sys.argv[1])
assert (site / "_static" / "colab-badge.svg").is_file(), "book/_static/colab-badge.svg not copied"
for page in site.rglob("*.html"):
    text = page.read_text(encoding="utf-8")
    if REMOTE in text:
        local = "/".join([".."] * (len(page.relative_to(site).parts) - 1) + ["_static/colab-badge.svg"])
        page.write_text(text.replace(REMOTE, local), encoding="utf-8")
PY
echo "build.sh: built $OUTPUT_DIR/index.html in $((SECONDS - start)) s"
