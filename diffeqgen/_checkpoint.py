"""Training state, its checkpoint file (atomic write, exact round trip), and continuing from it.

File layout: an 8-byte magic, an 8-byte little-endian header length, a JSON header, then the
payload: the leaves of the state written by ``equinox.tree_serialise_leaves``. The header holds
the format version, the step, the PRNG implementation, the sizes of the variable-length arrays,
the payload's size and SHA-256 checksum, and a fingerprint of the structure it holds (tree
structure and leaf shapes/dtypes of the model, EMA model and optimiser state). Loading checks
all of them before deserialising, so a truncated file, flipped bytes or a resume with a
different model or optimiser give an error naming the file and what differs, never a quiet
load. The file is written to ``path + ".tmp"``, flushed and fsynced, then moved over ``path``
with ``os.replace``, so a crash mid-write leaves the previous checkpoint intact.
"""

import hashlib
import io
import json
import os
import struct
import tempfile
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.random as jr
import numpy as np

__all__ = [
    "TrainState",
    "save_checkpoint",
    "load_checkpoint",
    "HISTORY_KEYS",
    "split_trainable",
    "continue_from",
]

_MAGIC = b"DEQGCKP1"
_VERSION = 2  # 2: payload checksum and structure fingerprint (1 had neither)
_STRUCTURED = ("model", "ema_model", "opt_state")
HISTORY_KEYS = ("step", "loss", "val_step", "val_loss")


class TrainState(NamedTuple):
    """Everything needed to continue a run exactly.

    Attributes:
        model: The trained Equinox model.
        ema_model: Exponential moving average of ``model``'s floating-point parameters.
        opt_state: The Optax optimiser state (of the trainable parameters only). ``None`` in a
            state passed to ``fit(..., init=...)`` means a fresh ``optimizer.init``.
        step: Number of completed optimiser updates (a Python int).
        key: The run's PRNG key (the per-step key is ``jr.fold_in(key, step)``-derived).
        history: Dict of NumPy arrays "step", "loss", "val_step", "val_loss", plus one array
            per entry of a loss's aux dict ("name" per step, "val_name" per validation).
    """

    model: Any
    ema_model: Any
    opt_state: Any
    step: int
    key: Any
    history: dict[str, np.ndarray]


def _empty_history() -> dict[str, np.ndarray]:
    return {
        "step": np.zeros(0, np.int64),
        "loss": np.zeros(0, np.float32),
        "val_step": np.zeros(0, np.int64),
        "val_loss": np.zeros(0, np.float32),
    }


def _typed_key(key):
    """Return a typed PRNG key (raw ``uint32[2]`` keys are wrapped with the default impl)."""
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key
    return jr.wrap_key_data(key)


def _payload(state: TrainState) -> dict:
    return {
        "model": state.model,
        "ema_model": state.ema_model,
        "opt_state": state.opt_state,
        "key": np.asarray(jr.key_data(_typed_key(state.key))),
        "history": {k: np.asarray(v) for k, v in state.history.items()},
    }


def save_checkpoint(path: str | os.PathLike, state: TrainState) -> None:
    """Write ``state`` to ``path`` atomically (temporary file, fsync, ``os.replace``).

    If anything fails before the rename, the temporary file is removed and the file previously
    at ``path`` (if any) is untouched.

    Args:
        path: Destination file (written exactly as given; no suffix is added).
        state: A `TrainState`.
    """
    if not isinstance(state, TrainState):
        raise TypeError(f"state must be a TrainState, got {type(state).__name__}")
    path = os.fspath(path)
    payload = _payload(state)
    key = _typed_key(state.key)
    header = {
        "version": _VERSION,
        "step": int(state.step),
        "key_impl": str(jr.key_impl(key)),
        "key_shape": list(payload["key"].shape),
        "history": {k: [int(v.shape[0]), str(v.dtype)] for k, v in payload["history"].items()},
        "structure": _fingerprint(payload),
    }
    buffer = io.BytesIO()
    eqx.tree_serialise_leaves(buffer, payload)
    data = buffer.getvalue()
    header["payload_bytes"] = len(data)
    header["payload_sha256"] = hashlib.sha256(data).hexdigest()
    blob = json.dumps(header).encode()
    tmp = path + ".tmp"
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    try:
        with open(tmp, "wb") as f:
            f.write(_MAGIC + struct.pack("<Q", len(blob)) + blob)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    try:  # make the rename itself durable (best effort; not all filesystems allow it)
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def read_header(path: str | os.PathLike) -> dict:
    """Return the JSON header of the checkpoint at ``path`` (raises ValueError if unreadable)."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        return _read_header(f, path)


def _read_header(f, path: str) -> dict:
    magic = f.read(len(_MAGIC))
    if magic != _MAGIC:
        raise ValueError(f"checkpoint {path!r} is not a diffeqgen checkpoint (bad magic bytes)")
    raw = f.read(8)
    if len(raw) != 8:
        raise ValueError(f"checkpoint {path!r} is truncated: its header length is cut off")
    (size,) = struct.unpack("<Q", raw)
    blob = f.read(size)
    if len(blob) != size:
        raise ValueError(
            f"checkpoint {path!r} is truncated: its header should have {size} bytes, found "
            f"{len(blob)}"
        )
    try:
        header = json.loads(blob.decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"checkpoint {path!r} has a damaged header (not valid JSON: {e})") from e
    if not isinstance(header, dict):
        raise ValueError(f"checkpoint {path!r} has a damaged header (not a JSON object)")
    if header.get("version") != _VERSION:
        raise ValueError(
            f"checkpoint {path!r} has format version {header.get('version')!r}, expected "
            f"{_VERSION} (version 1 files, without checksum and structure fingerprint, were "
            "written by an older diffeqgen; retrain, or load them with that version)"
        )
    missing = [
        k
        for k in ("step", "key_impl", "key_shape", "history", "structure", "payload_bytes",
                  "payload_sha256")
        if k not in header
    ]  # fmt: skip
    if missing:
        raise ValueError(f"checkpoint {path!r} has a damaged header (missing {missing})")
    return header


def _leaf_spec(x) -> list:
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        return [list(map(int, x.shape)), str(x.dtype)]
    return [None, type(x).__name__]


def _serialised(x) -> bool:
    return hasattr(x, "shape") or isinstance(x, bool | int | float | complex)


def _fingerprint(payload: dict) -> dict:
    """Leaf paths, shapes and dtypes of the model, EMA model and optimiser state.

    The leaves are those ``tree_serialise_leaves`` writes (arrays and Python numbers); their
    paths (``keystr``: attribute names, indices, the optimiser state's fields) describe the
    structure. Reprs of the tree definition are not used: they may hold memory addresses.
    """
    out = {}
    for name in _STRUCTURED:
        leaves = jax.tree_util.tree_flatten_with_path(eqx.filter(payload[name], _serialised))[0]
        out[name] = [[jax.tree_util.keystr(p), *_leaf_spec(x)] for p, x in leaves]
    return out


def _describe_difference(name: str, a: list, b: list) -> str | None:
    """What differs between the stored (``a``) and expected (``b``) leaves of ``name``."""
    for (pa, *sa), (pb, *sb) in zip(a, b, strict=False):
        if pa != pb:
            return f"{name} holds {name}{pa} in the file where {name}{pb} is expected"
        if sa != sb:
            return (
                f"{name}{pa} has shape {tuple(sa[0] or ())} and dtype {sa[1]} in the file, "
                f"expected shape {tuple(sb[0] or ())} and dtype {sb[1]}"
            )
    if len(a) != len(b):
        return f"{name} has {len(a)} arrays in the file, expected {len(b)}"
    return None


def load_checkpoint(path: str | os.PathLike, like: TrainState) -> TrainState:
    """Load a checkpoint written by `save_checkpoint`.

    Args:
        path: The checkpoint file.
        like: A `TrainState` giving the structure of ``model``, ``ema_model`` and ``opt_state``
            (for example a freshly initialised one); its step, key and history are ignored.

    Returns:
        The stored `TrainState`, bit for bit.

    Raises:
        FileNotFoundError: No file at ``path``.
        ValueError: Not a checkpoint, another format version, a truncated file or damaged
            header, weights whose checksum does not match (flipped bytes), or a model or
            optimiser state whose structure, shapes or dtypes differ from ``like`` (the message
            names the file and the first difference).
    """
    path = os.fspath(path)
    if not isinstance(like, TrainState):
        raise TypeError(f"like must be a TrainState, got {type(like).__name__}")
    with open(path, "rb") as f:
        header = _read_header(f, path)
        data = f.read(int(header["payload_bytes"]) + 1)
    size = int(header["payload_bytes"])
    if len(data) < size:
        raise ValueError(
            f"checkpoint {path!r} is truncated: {size} bytes of weights expected after the "
            f"header, found {len(data)}"
        )
    if len(data) > size:
        raise ValueError(f"checkpoint {path!r} has trailing data; expected end of file")
    if hashlib.sha256(data).hexdigest() != header["payload_sha256"]:
        raise ValueError(
            f"checkpoint {path!r} is damaged: the SHA-256 checksum of its {size} bytes of weights "
            "does not match the one stored in its header (bytes changed on disk or in transfer)"
        )
    template = {
        "model": like.model,
        "ema_model": like.ema_model,
        "opt_state": like.opt_state,
        "key": np.zeros(header["key_shape"], np.uint32),
        "history": {k: np.zeros(n, np.dtype(dt)) for k, (n, dt) in header["history"].items()},
    }
    wanted = _fingerprint(template)
    for name in _STRUCTURED:
        diff = _describe_difference(name, header["structure"][name], wanted[name])
        if diff is not None:
            what = "optimiser" if name == "opt_state" else "model"
            raise ValueError(
                f"checkpoint {path!r} could not be loaded: it does not match the given {what}: "
                f"{diff} (a different "
                f"{'optimiser or trainable selection' if name == 'opt_state' else 'model'} "
                "than the run that wrote it?)"
            )
    try:
        out = eqx.tree_deserialise_leaves(io.BytesIO(data), template)
    except (RuntimeError, ValueError, EOFError, OSError) as e:
        raise ValueError(
            f"checkpoint {path!r} could not be loaded into the given model/optimiser structure: {e}"
        ) from e
    key = jr.wrap_key_data(out["key"], impl=header["key_impl"])
    return TrainState(
        model=out["model"],
        ema_model=out["ema_model"],
        opt_state=out["opt_state"],
        step=int(header["step"]),
        key=key,
        history=out["history"],
    )


def split_trainable(model, trainable):
    """``(params, rest)``: the trainable floating-point arrays, and everything else."""
    params, rest = eqx.partition(model, eqx.is_inexact_array)
    if trainable is None:
        return params, rest
    try:
        params, frozen = eqx.partition(params, trainable)
    except Exception as e:  # noqa: BLE001
        raise ValueError(
            "trainable must be an eqx.filter spec for the model: a pytree of bools with the "
            "model's structure (or a prefix of it), or a callable leaf -> bool; "
            f"eqx.partition(model, trainable) failed: {e}"
        ) from e
    if not jax.tree_util.tree_leaves(params):
        raise ValueError(
            f"trainable={trainable!r} selects none of the floating-point arrays of the model "
            f"{type(model).__name__}; nothing would be trained"
        )
    return params, eqx.combine(frozen, rest)


def _signature(tree):
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    return treedef, [(tuple(np.shape(x)), getattr(x, "dtype", type(x))) for x in leaves]


def continue_from(start: TrainState, model, optimizer, trainable) -> TrainState:
    """Check ``start`` (from ``init=``) against the model and optimiser; fill a None opt_state."""
    if model is not start.model and not bool(eqx.tree_equal(model, start.model)):
        raise ValueError(
            "model differs from the model of init; to continue from init pass model=None "
            "(or init's own model), or replace the model in the state first "
            "(init.state._replace(model=..., ema_model=...))"
        )
    ema_sig = _signature(eqx.filter(start.ema_model, eqx.is_inexact_array))
    if ema_sig != _signature(eqx.filter(start.model, eqx.is_inexact_array)):
        raise ValueError("init.ema_model must have the structure and shapes of init.model")
    if not isinstance(start.step, int | np.integer) or start.step < 0:
        raise ValueError(f"init.step must be an integer >= 0, got {start.step!r}")
    missing = [k for k in HISTORY_KEYS if k not in start.history]
    if missing:
        raise ValueError(f"init.history lacks the keys {missing}; expected at least {HISTORY_KEYS}")
    params, _ = split_trainable(model, trainable)
    if start.opt_state is None:
        return start._replace(opt_state=optimizer.init(params), step=int(start.step))
    if _signature(start.opt_state) != _signature(jax.eval_shape(optimizer.init, params)):
        raise ValueError(
            "init.opt_state does not match optimizer.init of the trainable parameters (a "
            "different optimiser or trainable selection?); pass "
            "init=state._replace(opt_state=None) to start the optimiser afresh"
        )
    return start._replace(step=int(start.step))


def check_writable(path: str) -> None:
    """Raise ``ValueError`` naming ``path`` unless a checkpoint can be written there.

    Creates the directory if needed (as the write would) and a temporary file in it.
    """
    if os.path.isdir(path):
        raise ValueError(f"checkpoint={path!r} is a directory; give a file path")
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".deqg-write-test-"):
            pass
    except OSError as e:
        raise ValueError(
            f"checkpoint={path!r} cannot be written ({type(e).__name__}: {e}); checked before "
            "training so that no work is lost"
        ) from e
