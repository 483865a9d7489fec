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
    w2, floor = map(float, re.search(r"W2 ([\d.]+) \(floor ([\d.]+)", out).groups())
    assert w2 < 3 * floor, out  # a trained model, not noise (noise scores W2 > 1 on moons)
    log_lik = float(re.search(r"mean log-likelihood (-?[\d.]+)", out).group(1))
    assert log_lik > -3.5, out  # standard normal on moons gives about -3.9 nats
