"""Image data: the 8x8 digits shipped with scikit-learn, and MNIST read from a local file.

Images are NumPy arrays of shape ``(n, 1, h, w)`` (one channel first, the layout of
``diffeqgen.nn.UNet``), scaled to [-1, 1], with integer labels ``(n,)``. Nothing is downloaded.
"""

import gzip
import os
import pathlib

import numpy as np
from jaxtyping import Float, Int

from .._checks import check_choice, check_int

__all__ = ["digits", "load_mnist", "read_idx"]

DIGIT_LEVELS = 17
"""The sklearn digits take the integer values 0..16 (scaled to [-1, 1] in steps of 1/8)."""

_SPLITS = ("train", "test", "all")


def digits(
    split: str = "train", *, test_fraction: float = 0.3, seed: int = 0
) -> tuple[Float[np.ndarray, "n 1 8 8"], Int[np.ndarray, " n"]]:
    """The 1797 8x8 digits of scikit-learn (``sklearn.datasets.load_digits``), scaled to [-1, 1].

    Pixel values 0..16 become ``v / 8 - 1`` (17 levels, spacing 1/8). The split is a fixed
    random permutation of ``seed``: the first ``round(test_fraction * 1797)`` digits of it are
    the test set, the rest the training set, so the two are disjoint and the same seed always
    gives the same split.

    Args:
        split: ``"train"``, ``"test"`` or ``"all"`` (the original order).
        test_fraction: fraction of the digits in the test set, in (0, 1).
        seed: integer seed of the split (>= 0).

    Returns:
        ``(x, labels)``: ``x`` float32 of shape ``(n, 1, 8, 8)`` in [-1, 1], ``labels`` int32
        ``(n,)`` in 0..9.
    """
    check_choice("split", split, _SPLITS)
    seed = check_int("seed", seed, minimum=0)
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, int | float):
        raise TypeError(f"test_fraction must be a number in (0, 1), got {test_fraction!r}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    from sklearn.datasets import load_digits  # lazily: sklearn is slow to import

    d = load_digits()
    x = (d.images.astype(np.float32) / 8.0 - 1.0)[:, None]
    y = d.target.astype(np.int32)
    if split == "all":
        return x, y
    order = np.random.default_rng(seed).permutation(len(y))
    n_test = round(test_fraction * len(y))
    idx = order[:n_test] if split == "test" else order[n_test:]
    return x[idx], y[idx]


_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (the MNIST format; ``.gz`` compressed or not) into a NumPy array.

    The header is two zero bytes, a type code (0x08 unsigned byte, ... 0x0E double) and the
    number of dimensions, then one big-endian int32 per dimension; the data follow.

    Args:
        path: the file.

    Returns:
        The array, of the dtype and shape the header states.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a well-formed IDX file (bad magic, type, or size).
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path: no IDX file at {str(path)!r}")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise ValueError(f"path: {str(path)!r} is a damaged gzip file ({e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise ValueError(
            f"path: {str(path)!r} is not an IDX file (expected the magic bytes 00 00 <type> "
            f"<ndim> with type in {sorted(hex(k) for k in _IDX_TYPES)}, got {raw[:4].hex(' ')})"
        )
    ndim = raw[3]
    head = 4 + 4 * ndim
    if ndim == 0 or len(raw) < head:
        raise ValueError(f"path: {str(path)!r} has a truncated IDX header ({ndim} dimensions)")
    shape = tuple(int(v) for v in np.frombuffer(raw[4:head], ">i4"))
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    want = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - head != want:
        raise ValueError(
            f"path: {str(path)!r} holds {len(raw) - head} data bytes, but its header says shape "
            f"{shape} of {dtype} ({want} bytes)"
        )
    return np.frombuffer(raw[head:], dtype).reshape(shape).astype(dtype.newbyteorder("="))


def _scale_images(name: str, x: np.ndarray) -> np.ndarray:
    if x.ndim != 3 or x.dtype != np.uint8:
        raise ValueError(
            f"{name}: expected uint8 images of shape (n, h, w), got dtype {x.dtype} and shape "
            f"{x.shape}"
        )
    return (x.astype(np.float32) / 127.5 - 1.0)[:, None]


def _check_labels(name: str, y: np.ndarray, n: int) -> np.ndarray:
    if y.ndim != 1 or y.shape[0] != n or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(
            f"{name}: expected {n} integer labels of shape ({n},), got dtype {y.dtype} and shape "
            f"{y.shape}"
        )
    return y.astype(np.int32)


def load_mnist(
    path: str | os.PathLike,
    labels_path: str | os.PathLike | None = None,
    *,
    split: str = "train",
) -> tuple[Float[np.ndarray, "n 1 h w"], Int[np.ndarray, " n"] | None]:
    """MNIST (or any uint8 image set) from a local file, scaled to [-1, 1]; nothing is downloaded.

    Two layouts are read: an IDX image file (``train-images-idx3-ubyte``, optionally ``.gz``)
    with an optional IDX label file ``labels_path``; or an ``.npz`` file with arrays
    ``x_<split>`` (uint8 ``(n, h, w)``) and, if present, ``y_<split>`` (the layout of
    ``mnist.npz`` from Keras). Pixels ``v`` in 0..255 become ``v / 127.5 - 1``.

    Args:
        path: the IDX image file or the ``.npz`` file.
        labels_path: IDX label file (IDX layout only).
        split: ``"train"`` or ``"test"`` (``.npz`` layout only: which arrays to read).

    Returns:
        ``(x, labels)``: ``x`` float32 ``(n, 1, h, w)`` in [-1, 1]; ``labels`` int32 ``(n,)`` or
        None when the file has none.

    Raises:
        FileNotFoundError: a file is missing.
        ValueError: a file is malformed or lacks the arrays named above.
    """
    check_choice("split", split, ("train", "test"))
    p = pathlib.Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"path: no MNIST file at {str(p)!r}")
    if p.suffix == ".npz":
        if labels_path is not None:
            raise ValueError("labels_path is for IDX files; an .npz file holds its own labels")
        try:
            with np.load(p, allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files}
        except (OSError, ValueError) as e:
            raise ValueError(f"path: {str(p)!r} is not a readable .npz file ({e})") from None
        key = f"x_{split}"
        if key not in arrays:
            raise ValueError(
                f"path: {str(p)!r} has no array {key!r} (has {sorted(arrays)}); expected the "
                "Keras mnist.npz layout x_train, y_train, x_test, y_test"
            )
        x = _scale_images(f"{p.name}[{key}]", arrays[key])
        y = arrays.get(f"y_{split}")
        return x, None if y is None else _check_labels(f"{p.name}[y_{split}]", y, len(x))
    x = _scale_images(p.name, read_idx(p))
    if labels_path is None:
        return x, None
    return x, _check_labels(str(labels_path), read_idx(labels_path), len(x))
