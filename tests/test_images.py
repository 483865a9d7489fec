"""Images: the UNet, the digits and MNIST readers, the Frechet distance and the digit classifier."""

import gzip

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import scipy.linalg

import diffeqgen as dg

# ------------------------------------------------------------------------------------- UNet


@pytest.mark.parametrize(
    "shape,channels", [((1, 8, 8), (8, 16)), ((2, 16, 16), (8,)), ((1, 28, 28), (8, 8, 16))]
)
def test_unet_output_shape_equals_input_shape(shape, channels, key):
    net = dg.nn.UNet(shape[0], channels=channels, embed_dim=8, key=key)
    x = jr.normal(jr.key(1), shape)
    out = eqx.filter_jit(net)(0.3, x, None)  # jitted: eager op-by-op dispatch is slow
    assert out.shape == shape and bool(jnp.all(jnp.isfinite(out)))


def test_unet_time_and_class_change_the_output(key):
    net = dg.nn.UNet(1, channels=(8,), embed_dim=8, num_classes=10, key=key)
    x = jr.normal(jr.key(1), (1, 8, 8))
    f = eqx.filter_jit(net)
    a = f(0.2, x, jnp.int32(3))
    assert float(jnp.max(jnp.abs(a - f(0.7, x, jnp.int32(3))))) > 1e-3  # time
    assert float(jnp.max(jnp.abs(a - f(0.2, x, jnp.int32(4))))) > 1e-3  # class
    assert float(jnp.max(jnp.abs(a - f(0.2, x, jnp.int32(10))))) > 1e-3  # the null class
    with pytest.raises(ValueError, match="class-conditional"):
        f(0.2, x, None)
    with pytest.raises(ValueError, match="integer class label"):
        f(0.2, x, jnp.float32(3.0))


def test_unet_gradients_are_finite_and_nonzero(key):
    net = dg.nn.UNet(1, channels=(8, 8), embed_dim=8, num_classes=3, key=key)
    batch = (jr.normal(jr.key(1), (4, 1, 8, 8)), jnp.array([0, 1, 2, 3], jnp.int32))
    loss = dg.losses.get_loss("flow_matching", path="linear", cond_dropout=0.5, null_cond=3)
    grads = eqx.filter_jit(eqx.filter_grad(loss))(net, jr.key(2), batch)
    leaves = jax.tree_util.tree_leaves(eqx.filter(grads, eqx.is_array))
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    assert sum(float(jnp.sum(jnp.abs(g))) for g in leaves) > 0


def test_jitted_unet_is_vmappable_and_matches_per_sample_calls(key):
    net = dg.nn.UNet(1, channels=(8,), embed_dim=8, key=key)
    xs = jr.normal(jr.key(1), (3, 1, 7, 9))  # odd sizes: padded by the stride, cropped back
    ts = jnp.array([0.1, 0.5, 0.9])
    batched = jax.jit(jax.vmap(net, in_axes=(0, 0, None)))(ts, xs, None)
    assert batched.shape == xs.shape
    for i in range(3):
        np.testing.assert_allclose(batched[i], net(ts[i], xs[i], None), rtol=1e-4, atol=1e-5)


def test_unet_guidance_uses_the_library_mechanism(key):
    net = dg.nn.UNet(1, channels=(8,), embed_dim=8, num_classes=2, key=key)
    x, c = jr.normal(jr.key(1), (1, 8, 8)), jnp.int32(1)
    g = dg.solve.guided(net, 2.0, 2)
    f = eqx.filter_jit(lambda m, c: m(0.4, x, c))
    want = 3.0 * f(net, c) - 2.0 * f(net, jnp.int32(2))
    np.testing.assert_allclose(eqx.filter_jit(g)(0.4, x, c), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("res_blocks,mid_blocks", [(1, 1), (3, 2)])
def test_unet_block_counts(res_blocks, mid_blocks, key):
    """res_blocks per encoder and decoder level, mid_blocks in the bottleneck (default 2 and 3)."""
    default = dg.nn.UNet(1, channels=(8, 8), embed_dim=8, key=key)
    assert [len(b) for b in default.down + default.up] == [2] * 4 and len(default.mid) == 3
    net = dg.nn.UNet(
        1, channels=(8, 8), embed_dim=8, res_blocks=res_blocks, mid_blocks=mid_blocks, key=key
    )
    assert [len(b) for b in net.down + net.up] == [res_blocks] * 4 and len(net.mid) == mid_blocks
    x = jr.normal(jr.key(1), (1, 7, 9))
    out = eqx.filter_jit(net)(0.3, x, None)
    assert out.shape == x.shape and bool(jnp.all(jnp.isfinite(out)))
    assert float(jnp.max(jnp.abs(out - eqx.filter_jit(default)(0.3, x, None)))) > 1e-4


def test_unet_bad_inputs(key):
    with pytest.raises(ValueError, match="channels"):
        dg.nn.UNet(1, channels=(), key=key)
    for name in ("res_blocks", "mid_blocks"):
        with pytest.raises(ValueError, match=name):
            dg.nn.UNet(1, channels=(8,), key=key, **{name: 0})
    net = dg.nn.UNet(1, channels=(8,), embed_dim=8, key=key)
    with pytest.raises(ValueError, match=r"shape \(1, h, w\)"):
        net(0.0, jnp.zeros((2, 8, 8)), None)  # two channels for a one-channel UNet


# ----------------------------------------------------------------------------------- digits


def test_digits_range_labels_and_split():
    xa, ya = dg.data.digits("all")
    assert xa.shape == (1797, 1, 8, 8) and xa.dtype == np.float32
    assert xa.min() == -1.0 and xa.max() == 1.0
    # 17 levels, spacing 1/8
    np.testing.assert_array_equal(np.unique(xa), np.arange(17) / 8 - 1)
    assert set(np.unique(ya)) == set(range(10))
    x, y = dg.data.digits("train")
    xt, yt = dg.data.digits("test")
    assert len(x) + len(xt) == 1797 and len(xt) == round(0.3 * 1797)
    # deterministic and disjoint: each split is a fixed set of rows of "all"
    x2, _ = dg.data.digits("train")
    np.testing.assert_array_equal(x, x2)
    rows = {r.tobytes(): i for i, r in enumerate(xa.reshape(1797, -1))}
    tr = {rows[r.tobytes()] for r in x.reshape(len(x), -1)}
    te = {rows[r.tobytes()] for r in xt.reshape(len(xt), -1)}
    assert not tr & te
    # labels travel with their images
    idx = [rows[r.tobytes()] for r in xt.reshape(len(xt), -1)]
    np.testing.assert_array_equal(ya[idx], yt)
    # another seed, another split
    assert not np.array_equal(dg.data.digits("test", seed=1)[1], yt)


def _write_idx(path, arr, code=0x08, compress=False):
    head = bytes([0, 0, code, arr.ndim]) + np.asarray(arr.shape, ">i4").tobytes()
    raw = head + arr.astype(arr.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_reader_on_written_idx_files(tmp_path, compress):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    labs = rng.integers(0, 10, 5).astype(np.uint8)
    suffix = ".gz" if compress else ""
    _write_idx(tmp_path / f"img{suffix}", imgs, compress=compress)
    _write_idx(tmp_path / f"lab{suffix}", labs, compress=compress)
    np.testing.assert_array_equal(dg.data.read_idx(tmp_path / f"img{suffix}"), imgs)
    x, y = dg.data.load_mnist(tmp_path / f"img{suffix}", tmp_path / f"lab{suffix}")
    assert x.shape == (5, 1, 28, 28) and x.dtype == np.float32
    np.testing.assert_allclose(x[:, 0], imgs / 127.5 - 1.0, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(y, labs)
    x, y = dg.data.load_mnist(tmp_path / f"img{suffix}")
    assert y is None


def test_mnist_reader_on_npz(tmp_path):
    imgs = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4)
    np.savez(tmp_path / "m.npz", x_train=imgs, y_train=np.array([3, 7]), x_test=imgs[:1])
    x, y = dg.data.load_mnist(tmp_path / "m.npz")
    np.testing.assert_allclose(x[:, 0], imgs / 127.5 - 1.0, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(y, [3, 7])
    assert dg.data.load_mnist(tmp_path / "m.npz", split="test")[1] is None


def test_mnist_reader_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no MNIST file"):
        dg.data.load_mnist(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no IDX file"):
        dg.data.read_idx(tmp_path / "missing")
    (tmp_path / "junk").write_bytes(b"hello world")
    with pytest.raises(ValueError, match="not an IDX file"):
        dg.data.load_mnist(tmp_path / "junk")
    _write_idx(tmp_path / "short", np.zeros((3, 4, 4), np.uint8))
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-5])
    with pytest.raises(ValueError, match="header says shape"):
        dg.data.load_mnist(tmp_path / "short")
    (tmp_path / "bad.gz").write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(ValueError, match="damaged gzip"):
        dg.data.read_idx(tmp_path / "bad.gz")
    _write_idx(tmp_path / "img", np.zeros((3, 4, 4), np.uint8))
    _write_idx(tmp_path / "lab", np.zeros(2, np.uint8))
    with pytest.raises(ValueError, match="expected 3 integer labels"):
        dg.data.load_mnist(tmp_path / "img", tmp_path / "lab")
    np.savez(tmp_path / "m.npz", images=np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="no array 'x_train'"):
        dg.data.load_mnist(tmp_path / "m.npz")
    np.savez(tmp_path / "f.npz", x_train=np.zeros((2, 4, 4), np.float32))
    with pytest.raises(ValueError, match="uint8 images"):
        dg.data.load_mnist(tmp_path / "f.npz")


# ------------------------------------------------------------------------- Frechet distance


def _fd_reference(x, y):
    """The textbook formula with scipy.linalg.sqrtm of the product."""
    cx, cy = np.atleast_2d(np.cov(x, rowvar=False)), np.atleast_2d(np.cov(y, rowvar=False))
    cross = scipy.linalg.sqrtm(cx @ cy).real
    d = x.mean(0) - y.mean(0)
    return d @ d + np.trace(cx) + np.trace(cy) - 2 * np.trace(cross)


def test_frechet_distance_zero_symmetric_and_matches_scipy():
    rng = np.random.default_rng(0)
    for d in (1, 3, 10):
        a, b = rng.standard_normal((d, d)), rng.standard_normal((d, d))
        x = rng.standard_normal((200, d)) @ a + 1.0
        y = rng.standard_normal((150, d)) @ b
        fd = dg.metrics.frechet_distance(x, y)
        assert fd == pytest.approx(_fd_reference(x, y), rel=1e-6, abs=1e-8)
        assert fd == pytest.approx(dg.metrics.frechet_distance(y, x), rel=1e-9)
        assert dg.metrics.frechet_distance(x, x) == pytest.approx(0.0, abs=1e-7)
    # closed form: N(0, I) vs N(m, s^2 I) in d dims has FD |m|^2 + d (1 - s)^2 (population)
    x = rng.standard_normal((20000, 2))
    y = 2.0 * rng.standard_normal((20000, 2)) + np.array([1.0, 0.0])
    assert dg.metrics.frechet_distance(x, y) == pytest.approx(1.0 + 2 * 1.0, abs=0.1)


def test_frechet_distance_grows_with_noise_and_rejects_bad_input():
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((500, 5)), rng.standard_normal((500, 5))
    fds = [dg.metrics.frechet_distance(x, y + s * rng.standard_normal(y.shape)) for s in (0, 1, 2)]
    assert fds[0] < fds[1] < fds[2]
    with pytest.raises(ValueError, match="at least 2 rows"):
        dg.metrics.frechet_distance(x[:1], y)
    with pytest.raises(ValueError, match="finite"):
        dg.metrics.frechet_distance(x, np.where(y > 2, np.nan, y))


# ------------------------------------------------------------------------------ classifier


@pytest.fixture(scope="module")
def classifier():
    x, y = dg.data.digits("train")
    return dg.images.train_classifier(x, y, key=jr.key(0), num_steps=600)


def test_classifier_beats_90_percent_and_scores_images(classifier):
    xt, yt = dg.data.digits("test")
    assert dg.images.accuracy(classifier, xt, yt) > 0.9
    f = dg.images.features(classifier, xt)
    assert f.shape == (len(xt), 64) and np.all(np.isfinite(f))
    h = len(xt) // 2
    floor = dg.images.frechet_distance(classifier, xt[:h], xt[h : 2 * h])
    noisy = xt[:h] + 0.5 * np.random.default_rng(0).standard_normal(xt[:h].shape)
    assert dg.images.frechet_distance(classifier, noisy.astype(np.float32), xt[h : 2 * h]) > floor
    hist = dg.images.class_histogram(dg.images.predict(classifier, xt), 10)
    np.testing.assert_allclose(hist, np.bincount(yt, minlength=10) / len(yt), atol=0.03)
    assert dg.images.histogram_entropy(hist) == pytest.approx(np.log(10), abs=0.02)
    assert dg.images.histogram_entropy(np.eye(10)[3]) == 0.0
    with pytest.raises(ValueError, match="shape"):
        dg.images.features(classifier, xt[:, :, :4])
    with pytest.raises(TypeError, match="DigitClassifier"):
        dg.images.features("clf", xt)
