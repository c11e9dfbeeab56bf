#!/usr/bin/env bash
# Set up a development environment (first run only) and run the tests or demo.
#
#   bash dev.sh test [pytest args...]   e.g. bash dev.sh test -k demo
#   bash dev.sh demo [demo args...]     e.g. bash dev.sh demo --quick
#   bash dev.sh docs                    build the Sphinx site (warnings are errors)
#
# Needs only python3 >= 3.9 with venv and pip. Idempotent: creates .venv in
# the repository root if it is missing, installs a CPU build of torch if torch
# is not importable there, and (re)installs skpc in editable mode with the
# test and demo extras whenever setup.cfg or pyproject.toml changed since the
# last install. Set PYTHON to choose the interpreter that builds .venv, and
# OMP_NUM_THREADS to give torch more than one thread.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"
ROOT=$(pwd)
VENV="$ROOT/.venv"
VPY="$VENV/bin/python"
STAMP="$VENV/.skpc-install-stamp"
PYTHON=${PYTHON:-python3}
# The torch release this project is developed and tested against, CPU build:
# a bare `torch` requirement would pull the multi-GB CUDA build on Linux.
TORCH_PIN="2.13.0"
TORCH_CPU_INDEX="https://download.pytorch.org/whl/cpu"

# One torch/OpenMP thread unless the caller chose otherwise. On a 2-core
# machine shared with other jobs, 2 threads made fitting the demo's model 20-30x
# slower than 1 (every parallel region waits for a descheduled thread), while
# the models here are small enough that 1 thread loses little on an idle machine.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"

say() { echo "dev.sh: $*" >&2; }
die() { say "$*"; exit 1; }

usage() {
    cat >&2 <<'EOF'
usage: bash dev.sh COMMAND [ARGS...]

  test [pytest args]   set up .venv if needed, then run the test suite (pytest -q)
  docs                 set up .venv if needed, then build docs/_build/html (-W)
  demo [demo args]     set up .venv if needed, then run `python -m skpc demo`
                       (demo args: --quick, --output PATH, --max-iter N,
                        --device cpu|cuda|auto, --seed N)
EOF
}

make_venv() {
    command -v "$PYTHON" >/dev/null 2>&1 || die "'$PYTHON' not found; install Python >= 3.9 or set PYTHON=/path/to/python3."
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 9))' \
        || die "skpc needs Python >= 3.9, but $PYTHON is $("$PYTHON" -V 2>&1); set PYTHON=/path/to/python3.9+."
    # A .venv without a working pip (an interrupted creation) is rebuilt.
    if [[ -x "$VPY" ]] && "$VPY" -m pip --version >/dev/null 2>&1; then
        return
    fi
    say "creating $VENV with $("$PYTHON" -V 2>&1)"
    "$PYTHON" -m venv --clear "$VENV" \
        || die "could not create .venv; on Debian/Ubuntu install the venv module (apt-get install python3-venv)."
    rm -f "$STAMP"
}

install_torch() {
    if "$VPY" -c 'import torch' >/dev/null 2>&1; then
        return
    fi
    say "installing torch $TORCH_PIN (CPU build)"
    # The exact CPU build first (a local wheel or a configured index may hold
    # it); otherwise the CPU-only index of the PyTorch project, e.g. for a
    # Python version without that wheel.
    if "$VPY" -m pip install -q "torch==$TORCH_PIN+cpu" 2>/dev/null; then
        return
    fi
    say "torch==$TORCH_PIN+cpu is not available here; trying $TORCH_CPU_INDEX"
    if "$VPY" -m pip install -q torch --index-url "$TORCH_CPU_INDEX"; then
        return
    fi
    say "WARNING: no CPU-only torch could be installed; pip will install torch's default build (large) next."
}

install_skpc() {
    local want have=""
    want=$(cat setup.cfg pyproject.toml | "$VPY" -c 'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())')
    [[ -f "$STAMP" ]] && have=$(cat "$STAMP")
    # Also reinstall when something the commands need has gone missing.
    if [[ "$want" == "$have" ]] && "$VPY" - <<'EOF' >/dev/null 2>&1
import importlib.metadata as md, sys
for dist in ("skpc", "pytest", "hypothesis", "matplotlib", "sphinx", "sphinx-gallery", "numpydoc"):
    md.version(dist)  # raises when the distribution is not installed
EOF
    then
        return
    fi
    say "installing skpc (editable) with the test, demo and docs extras"
    # -qq: errors only (-q still prints warnings about unreachable extra indexes).
    # The docs extra is part of the test setup: tests/test_docs.py builds the site.
    "$VPY" -m pip install -qq -e ".[test,demo,docs]"
    echo "$want" >"$STAMP"
}

setup() {
    make_venv
    install_torch
    install_skpc
}

command=${1:-}
case "$command" in
    test)
        shift
        setup
        exec "$VPY" -m pytest -q "$@"
        ;;
    demo)
        shift
        setup
        exec "$VPY" -m skpc demo "$@"
        ;;
    docs)
        shift
        setup
        exec "$VPY" -m sphinx -W --keep-going -b html docs docs/_build/html "$@"
        ;;
    -h | --help | help)
        usage
        ;;
    *)
        usage
        [[ -n "$command" ]] && say "unknown command '$command'"
        exit 2
        ;;
esac
