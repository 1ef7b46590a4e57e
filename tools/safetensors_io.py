# safetensors_io.py - writes and reads safetensors files (the service's model
# file format) by hand, F32 and I8 (int8 weights) only, without the
# `safetensors` package.
#
# Layout: u64 little-endian header length N, N bytes of JSON header, then the
# tensor bytes.  The header maps each tensor name to {"dtype", "shape",
# "data_offsets": [begin, end]} (offsets relative to the start of the byte
# buffer) and may hold "__metadata__": {str: str}.  We write the tensors
# contiguously in header order, little-endian, C order, and pad the JSON with
# spaces so that 8 + N is a multiple of 8 (every F32 tensor then starts
# 4-aligned in the file, and 8-aligned at the start of the buffer, as long as
# I8 tensors come after them: convert.py writes those last).

import json
import os
import struct

import numpy as np

DTYPES = {"F32": np.dtype("<f4"), "I8": np.dtype("i1")}
MAX_HEADER = 100 * 1024 * 1024  # sanity bound on N when reading


class SafetensorsError(ValueError):
    """A file that is not a well-formed safetensors file we can read."""


def _as_array(name, value):
    """Returns value as a contiguous little-endian float32 numpy array, or
    an int8 one (int8 weights), and its dtype name."""
    if hasattr(value, "detach"):  # a torch tensor; no torch import needed
        value = value.detach().cpu().contiguous()
        if str(value.dtype) == "torch.int8":
            value = value.numpy()
        elif not value.is_floating_point():
            raise SafetensorsError(f"{name}: dtype {value.dtype} is not F32 or I8")
        else:
            value = value.float().numpy()
    arr = np.asarray(value)
    if arr.dtype == np.int8:
        return arr.astype("i1", order="C", copy=False), "I8"
    if arr.dtype != np.float32:
        raise SafetensorsError(
            f"{name}: dtype {arr.dtype} refused (only F32 and I8 are written; "
            "convert before writing)")
    # astype keeps 0-d arrays 0-d (ascontiguousarray would make them 1-d).
    return arr.astype("<f4", order="C", copy=False), "F32"


def encode(tensors, metadata=None):
    """Returns the bytes of a safetensors file.

    tensors: mapping name -> float32 or int8 array (numpy or torch),
    written in the mapping's order.  metadata: mapping str -> str, or None.
    """
    header = {}
    if metadata:
        for k, v in metadata.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise SafetensorsError(
                    f"metadata {k!r}: keys and values must be strings")
        header["__metadata__"] = dict(metadata)
    arrays = []
    offset = 0
    for name, value in tensors.items():
        if not isinstance(name, str) or name == "__metadata__" or not name:
            raise SafetensorsError(f"bad tensor name {name!r}")
        arr, dtype = _as_array(name, value)
        header[name] = {"dtype": dtype, "shape": [int(s) for s in arr.shape],
                        "data_offsets": [offset, offset + arr.nbytes]}
        offset += arr.nbytes
        arrays.append(arr)
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=True)
    raw = text.encode("ascii")
    raw += b" " * ((-(8 + len(raw))) % 8)
    parts = [struct.pack("<Q", len(raw)), raw]
    parts.extend(a.tobytes(order="C") for a in arrays)
    return b"".join(parts)


def write(path, tensors, metadata=None):
    """Writes a safetensors file atomically (temp file, then rename), so a
    process watching `path` never sees a half-written model."""
    data = encode(tensors, metadata)
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return len(data)


def _no_duplicates(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise SafetensorsError(f"duplicate key {k!r} in header")
        out[k] = v
    return out


def decode(data):
    """Parses safetensors bytes; returns (metadata dict, {name: np.ndarray})
    in header order.  Checks every offset; the arrays are copies."""
    data = memoryview(data)
    if len(data) < 8:
        raise SafetensorsError("file shorter than the 8-byte header length")
    (n,) = struct.unpack("<Q", data[:8])
    if n > MAX_HEADER or 8 + n > len(data):
        raise SafetensorsError(f"header length {n} exceeds the file")
    try:
        header = json.loads(bytes(data[8:8 + n]).decode("utf-8"),
                            object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SafetensorsError(f"header is not JSON: {e}") from None
    if not isinstance(header, dict):
        raise SafetensorsError("header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str)
            for k, v in metadata.items()):
        raise SafetensorsError("__metadata__ must map strings to strings")
    buf = data[8 + n:]
    tensors = {}
    spans = []
    for name, info in header.items():
        if not isinstance(info, dict):
            raise SafetensorsError(f"{name}: entry is not an object")
        dtype = info.get("dtype")
        if dtype not in DTYPES:
            raise SafetensorsError(f"{name}: unsupported dtype {dtype!r}")
        shape = info.get("shape")
        offs = info.get("data_offsets")
        if (not isinstance(shape, list)
                or not all(isinstance(s, int) and s >= 0 for s in shape)):
            raise SafetensorsError(f"{name}: bad shape {shape!r}")
        if (not isinstance(offs, list) or len(offs) != 2
                or not all(isinstance(o, int) for o in offs)
                or not 0 <= offs[0] <= offs[1] <= len(buf)):
            raise SafetensorsError(f"{name}: bad data_offsets {offs!r}")
        count = int(np.prod(shape, dtype=np.int64))
        if offs[1] - offs[0] != count * DTYPES[dtype].itemsize:
            raise SafetensorsError(
                f"{name}: {offs[1] - offs[0]} bytes for shape {shape}")
        arr = np.frombuffer(buf[offs[0]:offs[1]], dtype=DTYPES[dtype])
        tensors[name] = arr.reshape(shape).copy()
        spans.append((offs[0], offs[1], name))
    # The buffer must be covered exactly, without overlaps or gaps.
    pos = 0
    for begin, end, name in sorted(spans):
        if begin != pos:
            raise SafetensorsError(
                f"{name}: starts at {begin}, expected {pos} (gap or overlap)")
        pos = end
    if pos != len(buf):
        raise SafetensorsError(
            f"buffer is {len(buf)} bytes, tensors cover {pos}")
    return metadata, tensors


def read(path):
    """Reads a safetensors file; see decode()."""
    with open(path, "rb") as f:
        return decode(f.read())
