"""Every study's own entry point (``python experiments/<name>.py``) runs.

The tests run the quick studies in-process through their ``main`` (no JAX start-up per study);
this one checks, in ONE subprocess for all of them, that each file run as ``__main__`` parses its
flags and prints its ``--help`` with ``--quick``.
"""

import json
import subprocess
import sys

from helpers import EXPERIMENTS

STUDIES = sorted(p for p in EXPERIMENTS.glob("*.py") if not p.name.startswith("_"))

CODE = """
import contextlib, io, json, runpy, sys
out = {}
for path in sys.argv[1:]:
    sys.argv = [path, "--help"]
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            runpy.run_path(path, run_name="__main__")
        code = "returned without exiting"
    except SystemExit as e:
        code = e.code
    out[path] = [code, buf.getvalue()]
print("RESULT " + json.dumps(out))
"""


def test_every_study_runs_as_a_script():
    assert len(STUDIES) >= 9, STUDIES
    proc = subprocess.run(
        [sys.executable, "-c", CODE, *map(str, STUDIES)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (line,) = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    result = json.loads(line[len("RESULT ") :])
    assert sorted(result) == sorted(map(str, STUDIES))
    for path, (code, text) in result.items():
        assert code in (0, None) and "--quick" in text and "--out" in text, (path, code, text)
