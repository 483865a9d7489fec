#!/usr/bin/env bash
# Set up a virtual environment (once) and run the main study or the test suite.
#   ./run.sh study [flags]   -> python experiments/cnf_likelihood.py [flags]
#   ./run.sh test  [flags]   -> pytest [flags]
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import diffeqgen, pytest, xdist, pytest_timeout" 2>/dev/null; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e ".[test]"
fi
what=${1:-test}
shift || true
case "$what" in
    study) exec .venv/bin/python experiments/cnf_likelihood.py "$@" ;;
    test) exec .venv/bin/python -m pytest -n 2 --dist worksteal "$@" ;;
    *) echo "usage: ./run.sh study|test [flags]" >&2; exit 2 ;;
esac
