"""Checkpoints detect damage: format version, payload checksum, structure fingerprint.

Each damaged or mismatched file gives a ``ValueError`` naming the file and what differs; a good
file still resumes bit for bit.
"""

import functools
import json
import struct

import jax
import jax.random as jr
import numpy as np
import optax
import pytest

import diffeqgen as dg

DATA = jr.normal(jr.key(1), (64, 2))
LOSS = functools.partial(dg.losses.flow_matching_loss, path="linear")
OPT = dg.train.make_optimizer(1e-3)


def _model(width=8):
    return dg.nn.MLP(2, 2, width=width, depth=1, key=jr.key(0))


def _fit(num_steps, checkpoint=None, resume=False, optimizer=OPT, model=None):
    return dg.train.fit(
        _model() if model is None else model, LOSS, DATA, optimizer=optimizer, key=0,
        num_steps=num_steps, batch_size=8, checkpoint=checkpoint, resume=resume, progress=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "run.ckpt"
    _fit(3, checkpoint=path)
    return path, path.read_bytes()


def _header_end(raw: bytes) -> int:
    (size,) = struct.unpack("<Q", raw[8:16])
    return 16 + size


def _load(path, model=None, optimizer=OPT):
    like = dg.train.init_state(_model() if model is None else model, optimizer, key=0)
    return dg.train.load_checkpoint(path, like)


def test_flipped_byte_in_weights_is_detected(good, tmp_path):
    path, raw = good
    damaged = bytearray(raw)
    damaged[_header_end(raw) + (len(raw) - _header_end(raw)) // 2] ^= 0x01  # one bit, mid-weights
    bad = tmp_path / "flipped.ckpt"
    bad.write_bytes(bytes(damaged))
    with pytest.raises(ValueError, match=r"flipped\.ckpt.*damaged.*SHA-256 checksum"):
        _load(bad)
    assert _load(path).step == 3  # the original is fine


@pytest.mark.parametrize(
    "cut,match",
    [(12, "header length is cut off"), (40, "header should have \\d+ bytes, found 24"),
     (-7, "weights expected after the header, found")],
)  # fmt: skip
def test_truncated_file_is_detected(good, tmp_path, cut, match):
    _, raw = good
    bad = tmp_path / "cut.ckpt"
    bad.write_bytes(raw[:cut])
    with pytest.raises(ValueError, match=r"cut\.ckpt.*truncated.*" + match):
        _load(bad)


def test_old_format_version_gives_a_clear_error(good, tmp_path):
    _, raw = good
    header = json.loads(raw[16 : _header_end(raw)])
    header["version"] = 1
    blob = json.dumps(header).encode()
    bad = tmp_path / "old.ckpt"
    bad.write_bytes(raw[:8] + struct.pack("<Q", len(blob)) + blob + raw[_header_end(raw) :])
    with pytest.raises(ValueError, match=r"old\.ckpt.*format version 1, expected 2"):
        _load(bad)


def test_resume_with_a_different_optimiser_names_file_and_optimiser(good, tmp_path):
    path, raw = good
    copy = tmp_path / "resume.ckpt"
    copy.write_bytes(raw)
    with pytest.raises(ValueError, match=r"resume\.ckpt.*does not match the given optimiser"):
        _fit(6, checkpoint=copy, resume=True, optimizer=optax.sgd(1e-3))
    assert copy.read_bytes() == raw  # left untouched


def test_resume_with_a_different_model_shape_names_the_array(good):
    path, _ = good
    with pytest.raises(
        ValueError,
        match=r"run\.ckpt.*model\.layers\[0\]\.weight has shape \(8, \d+\).* expected shape "
        r"\(16, \d+\)",
    ):
        _load(path, model=_model(width=16))


def test_good_checkpoint_still_resumes_bit_for_bit(good, tmp_path):
    _, raw = good
    copy = tmp_path / "again.ckpt"
    copy.write_bytes(raw)
    resumed = _fit(5, checkpoint=copy, resume=True)
    straight = _fit(5)
    for a, b in zip(
        jax.tree_util.tree_leaves(resumed.model), jax.tree_util.tree_leaves(straight.model),
        strict=True,
    ):  # fmt: skip
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_unwritable_checkpoint_is_refused_before_training(tmp_path):
    calls = []

    def loss(model, key, batch):
        calls.append(1)  # traced once when fit checks the loss; never if refused before
        return LOSS(model, key, batch)

    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ValueError, match=r"file/run\.ckpt.*cannot be written"):
        dg.train.fit(_model(), loss, DATA, optimizer=OPT, key=0, num_steps=2, batch_size=8,
                     checkpoint=blocker / "run.ckpt", progress=False)  # fmt: skip
    assert not calls
