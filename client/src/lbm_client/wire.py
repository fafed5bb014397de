"""The wire format of the openpi websocket protocol: msgpack with numpy arrays.

An array travels as a msgpack map with *bytes* keys, exactly as ``openpi_client.msgpack_numpy``
writes it, so that the unmodified openpi client and our server understand each other::

    {b"__ndarray__": True, b"data": <raw bytes, C order>, b"dtype": "<f4", b"shape": [T, A]}
    {b"__npgeneric__": True, b"data": <python scalar>, b"dtype": "<f4"}          # numpy scalars

Decoding is stricter than openpi's: the server decodes bytes from the network, so dtypes are
limited to plain numbers, bools and strings (no object or void dtypes), and the byte count must
match the shape, otherwise :class:`WireError` says what was wrong.

This module imports numpy and msgpack only (the thin client depends on it).
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

# Plain data only: bool, signed/unsigned int, float, bytes and unicode strings.
_ALLOWED_KINDS = frozenset("biufSU")


class WireError(ValueError):
    """A message that is not valid msgpack-numpy (the text says what was wrong)."""


def _encode(obj: Any) -> Any:
    if isinstance(obj, (np.ndarray, np.generic)) and obj.dtype.kind not in _ALLOWED_KINDS:
        raise WireError(f"cannot send numpy dtype {obj.dtype} (kind {obj.dtype.kind!r}); use numbers, bools or strings")
    if isinstance(obj, np.ndarray):
        arr = np.ascontiguousarray(obj)
        return {b"__ndarray__": True, b"data": arr.tobytes(), b"dtype": arr.dtype.str, b"shape": list(arr.shape)}
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"cannot msgpack-encode an object of type {type(obj).__name__}")


def _dtype(raw: Any) -> np.dtype:
    if isinstance(raw, bytes):
        raw = raw.decode("ascii", "replace")
    try:
        dtype = np.dtype(raw)
    except TypeError as error:
        raise WireError(f"array dtype {raw!r} is not a numpy dtype ({error})") from None
    if dtype.kind not in _ALLOWED_KINDS or dtype.fields is not None:
        raise WireError(f"array dtype {raw!r} is not allowed (only bool, int, uint, float and string arrays)")
    return dtype


def _decode(obj: dict) -> Any:
    if b"__ndarray__" in obj:
        dtype = _dtype(obj.get(b"dtype"))
        shape = obj.get(b"shape")
        data = obj.get(b"data")
        if not isinstance(shape, (list, tuple)) or not all(isinstance(n, int) and n >= 0 for n in shape):
            raise WireError(f"array shape {shape!r} is not a list of non-negative integers")
        if not isinstance(data, bytes):
            raise WireError("array data must be msgpack bin (bytes)")
        expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if len(data) != expected:
            raise WireError(f"array of shape {tuple(shape)} and dtype {dtype.str} needs {expected} bytes, got {len(data)}")
        return np.frombuffer(data, dtype=dtype).reshape(shape)
    if b"__npgeneric__" in obj:
        return _dtype(obj.get(b"dtype")).type(obj.get(b"data"))
    return obj


def packb(obj: Any) -> bytes:
    """Encode ``obj`` (dicts, lists, str, numbers, numpy arrays and scalars) as msgpack-numpy bytes."""
    data = msgpack.packb(obj, default=_encode, use_bin_type=True)
    if data is None:  # only when packing into a stream, which this does not do
        raise WireError("msgpack produced no bytes")
    return data


def unpackb(data: bytes) -> Any:
    """Decode msgpack-numpy bytes; arrays come back read-only (they view the message buffer).

    Raises :class:`WireError` for anything that is not valid msgpack-numpy.
    """
    try:
        return msgpack.unpackb(data, object_hook=_decode, raw=False, strict_map_key=False)
    except WireError:
        raise
    except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, ValueError, TypeError) as error:
        raise WireError(f"not a valid msgpack message ({type(error).__name__}: {error})") from None
