"""diffeqgen.plotting: the drawn data equal the inputs (running means, trajectories, grids)."""

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from diffeqgen import plotting  # noqa: E402


@pytest.fixture
def ax():
    fig, ax = plt.subplots()
    yield ax
    plt.close(fig)


def test_running_mean_exact():
    x = np.array([1.0, 2.0, 4.0, 8.0, 16.0])
    np.testing.assert_allclose(plotting.running_mean(x, 2), [1.5, 3.0, 6.0, 12.0])
    np.testing.assert_allclose(plotting.running_mean(x, 5), [31.0 / 5])
    np.testing.assert_array_equal(plotting.running_mean(x, 1), x)
    with pytest.raises(ValueError, match="window"):
        plotting.running_mean(x, 0)


def test_ema_exact():
    # s_{-1} = x_0 = 4; alpha = 1/2: s = 4, (4 + 0) / 2, (2 + 8) / 2.
    np.testing.assert_allclose(plotting.ema([4.0, 0.0, 8.0], 0.5), [4.0, 2.0, 5.0])
    np.testing.assert_array_equal(plotting.ema([1.0, 5.0], 1.0), [1.0, 5.0])
    assert plotting.ema([], 0.1).shape == (0,)
    with pytest.raises(ValueError, match="alpha"):
        plotting.ema([1.0], 0.0)


def test_loss_curve_draws_running_mean_and_validation(ax):
    history = dict(
        step=np.arange(1, 401),
        loss=np.arange(400, dtype=np.float32),
        val_step=np.array([200, 400]),
        val_loss=np.array([5.0, 3.0]),
    )
    smooth = plotting.loss_curve(ax, history, label="m")  # default window 400 // 200 = 2
    np.testing.assert_allclose(smooth, np.arange(399) + 0.5)
    train, val = ax.get_lines()
    np.testing.assert_array_equal(train.get_xdata(), np.arange(2, 401))
    np.testing.assert_allclose(train.get_ydata(), smooth)
    assert train.get_label() == "m: train (running mean 2)"
    np.testing.assert_array_equal(val.get_ydata(), [5.0, 3.0])
    assert val.get_label() == "m: validation (EMA)" and val.get_color() == train.get_color()


def test_loss_curve_without_validation(ax):
    history = dict(step=np.arange(1, 4), loss=np.array([3.0, 2.0, 1.0]), val_step=[], val_loss=[])
    plotting.loss_curve(ax, history, window=1, val_label="unused")
    (train,) = ax.get_lines()
    np.testing.assert_array_equal(train.get_ydata(), [3.0, 2.0, 1.0])


def test_trajectories(ax, key):
    import jax.random as jr

    xs = np.asarray(jr.normal(key, (7, 5, 2)))
    plotting.trajectories(ax, xs, lim=3.0, title="paths")
    lines = ax.get_lines()
    assert len(lines) == 5
    np.testing.assert_array_equal(lines[2].get_xydata(), xs[:, 2])
    start, end = ax.collections
    np.testing.assert_allclose(start.get_offsets(), xs[0])
    np.testing.assert_allclose(end.get_offsets(), xs[-1])
    assert ax.get_xlim() == (-3.0, 3.0) and ax.get_title() == "paths"
    with pytest.raises(ValueError, match="xs"):
        plotting.trajectories(ax, xs[0])


def test_heatmap(ax):
    v = np.arange(12.0 * 12)
    im = plotting.heatmap(ax, v, lim=2.0, title="h", cmap="magma")
    np.testing.assert_array_equal(im.get_array(), v.reshape(12, 12))
    assert tuple(im.get_extent()) == (-2.0, 2.0, -2.0, 2.0)
    with pytest.raises(ValueError, match="square"):
        plotting.heatmap(ax, np.arange(10.0))


def test_hutchinson_draws_std_bias_and_rate(ax):
    rows = [
        dict(num_probes=1, std=0.8, bias=-0.02, bias_se=0.01),
        dict(num_probes=4, std=0.4, bias=0.01, bias_se=None),
    ]
    plotting.hutchinson(ax, rows)
    std, rate = ax.get_lines()[0], ax.get_lines()[-1]
    np.testing.assert_array_equal(std.get_xdata(), [1, 4])
    np.testing.assert_array_equal(std.get_ydata(), [0.8, 0.4])
    np.testing.assert_allclose(rate.get_ydata(), [0.8, 0.4])  # 0.8 / sqrt(probes)
    (bars,) = ax.containers
    np.testing.assert_array_equal(bars.lines[0].get_ydata(), [0.02, 0.01])  # |bias|
    assert ax.get_xscale() == ax.get_yscale() == "log"
    with pytest.raises(ValueError, match="rows"):
        plotting.hutchinson(ax, [])
