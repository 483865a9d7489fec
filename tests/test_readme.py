import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.slow
def test_readme_example_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) == 1, "the README should hold exactly one library example"
    exec(compile(blocks[0], str(README), "exec"), {"__name__": "__readme__"})
    out = capsys.readouterr().out
    # Calibrated on the example as written (seed 0, CPU): W2 0.226 = 1.66 x the floor 0.136, mean
    # log-likelihood -2.727 nats. The same block trained for 1000 of its 2000 steps scores W2 0.304
    # (2.24 x) and -2.905 nats, 500 steps 0.355 (2.6 x) and -3.035; N(0, I) about -3.9 nats.
    w2, floor = map(float, re.search(r"W2 ([\d.]+) \(floor ([\d.]+)", out).groups())
    assert w2 < 2.0 * floor, out
    log_lik = float(re.search(r"mean log-likelihood (-?[\d.]+)", out).group(1))
    assert log_lik > -2.83, out
