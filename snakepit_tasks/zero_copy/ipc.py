"""Large values as Arrow IPC streams and back: tables and record batches as they are, arrays
(numpy, torch, anything with ``__dlpack__``) as one flat column plus dtype and shape.

Reading back never copies a buffer: a table's columns are slices of the buffer it was read
from, and an array is a ``numpy.from_dlpack`` view of its column (a torch tensor is
``torch.from_dlpack`` of that).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from . import arrow

KIND_KEY = b"snakepit.kind"
DTYPE_KEY = b"snakepit.dtype"
SHAPE_KEY = b"snakepit.shape"
TORCH_DTYPE_KEY = b"snakepit.torch_dtype"
_OUR_KEYS = (KIND_KEY, DTYPE_KEY, SHAPE_KEY, TORCH_DTYPE_KEY)
KINDS = ("table", "batch", "ndarray", "torch", "dlpack")


def kind_of(value: Any) -> str | None:
    """``"table"``, ``"batch"``, ``"ndarray"``, ``"torch"``, ``"dlpack"``, or None for a value
    this module does not carry. Loads no library: a value of one is only possible once its
    module is imported."""
    module = type(value).__module__.partition(".")[0]
    if module == "pyarrow":
        pa = sys.modules["pyarrow"]
        if isinstance(value, pa.Table):
            return "table"
        if isinstance(value, pa.RecordBatch):
            return "batch"
        return None
    if module == "numpy":
        np = sys.modules["numpy"]
        if isinstance(value, np.ndarray) and not value.dtype.hasobject:
            return "ndarray"
        return None
    if module == "torch":
        return "torch" if hasattr(value, "__dlpack__") else None
    if hasattr(value, "__dlpack__") and hasattr(value, "__dlpack_device__"):
        return "dlpack"
    return None


def nbytes(value: Any, kind: str) -> int:
    """Bytes of data ``value`` holds (what the threshold is compared with)."""
    if kind in ("table", "batch", "ndarray"):
        return int(value.nbytes)
    if kind == "torch":
        return int(value.element_size() * value.nelement())
    try:
        return int(value.nbytes)
    except AttributeError:
        return int(_as_numpy(value, kind).nbytes)


def to_arrow(value: Any, kind: str) -> Any:
    """``value`` as a pyarrow Table or RecordBatch whose schema metadata says how to rebuild
    it (no data is copied, except a non-contiguous array, made contiguous, or device memory,
    brought to the host)."""
    pa = arrow.require()
    if kind in ("table", "batch"):
        return value.replace_schema_metadata({**(value.schema.metadata or {}), KIND_KEY: kind})
    np = _numpy()
    array = _as_numpy(value, kind)
    flat = np.ascontiguousarray(array).reshape(-1)
    if flat.dtype.kind in "iuf" and flat.dtype.isnative:
        column = pa.array(flat)
    else:  # bool, complex, datetime, byte strings, non-native order: the raw bytes
        column = pa.array(flat.view(np.uint8))
    meta = {KIND_KEY: kind.encode(), DTYPE_KEY: array.dtype.str.encode(),
            SHAPE_KEY: json.dumps(list(array.shape)).encode()}
    if kind == "torch":
        meta[TORCH_DTYPE_KEY] = str(value.dtype).encode()
    return pa.RecordBatch.from_arrays([column], names=["data"]).replace_schema_metadata(meta)


def write(data: Any, sink: Any) -> None:
    """Write Table or RecordBatch ``data`` to ``sink`` as one Arrow IPC stream."""
    pa = arrow.require()
    with pa.ipc.new_stream(sink, data.schema) as writer:
        if isinstance(data, pa.Table):
            writer.write_table(data)
        else:
            writer.write_batch(data)


def stream_size(data: Any) -> int:
    """Exact bytes :func:`write` produces for ``data`` (counted, nothing copied)."""
    pa = arrow.require()
    mock = pa.MockOutputStream()
    write(data, mock)
    return int(mock.size())


def read(buffer: Any) -> Any:
    """The value of the Arrow IPC stream in pyarrow ``buffer``, its buffers slices of it."""
    pa = arrow.require()
    reader = pa.ipc.open_stream(pa.BufferReader(buffer))
    return from_arrow(reader.read_all())


def from_arrow(table: Any) -> Any:
    """The value :func:`to_arrow` made ``table`` from (a Table for tables, a RecordBatch for
    batches, a numpy array or torch tensor for arrays)."""
    pa = arrow.require()
    meta = dict(table.schema.metadata or {})
    kind = meta.get(KIND_KEY, b"table").decode()
    if kind in ("table", "batch"):
        rest = {k: v for k, v in meta.items() if k not in _OUR_KEYS}
        table = table.replace_schema_metadata(rest or None)
        if kind == "table":
            return table
        batches = table.to_batches()
        if len(batches) == 1:
            return batches[0]
        return table.combine_chunks().to_batches()[0] if table.num_rows else (
            pa.RecordBatch.from_pylist([], schema=table.schema))
    np = _numpy()
    chunks = table.column(0).chunks
    column = chunks[0] if len(chunks) == 1 else pa.concat_arrays(chunks)
    shape = tuple(json.loads(meta[SHAPE_KEY]))
    if kind == "torch":
        tensor = _to_torch(column, shape, meta.get(TORCH_DTYPE_KEY, b"").decode())
        if tensor is not None:
            return tensor
    try:
        flat = np.from_dlpack(column)
    except (BufferError, TypeError, ValueError, RuntimeError):  # e.g. an empty array
        flat = column.to_numpy(zero_copy_only=False)
    dtype = np.dtype(meta[DTYPE_KEY].decode())
    array = flat.view(dtype).reshape(shape) if flat.dtype != dtype else flat.reshape(shape)
    if array.flags.writeable:
        array.flags.writeable = False  # shared memory: take a copy to change it
    return array


def _numpy() -> Any:
    import numpy

    return numpy


def _as_numpy(value: Any, kind: str) -> Any:
    """A numpy view of an array (a torch tensor is detached and, on a device, copied to the
    host first; a bfloat16 tensor travels as its int16 bits)."""
    np = _numpy()
    if kind == "ndarray":
        return value
    if kind == "torch":
        tensor = value.detach()
        if tensor.device.type != "cpu":
            tensor = tensor.cpu()
        if str(tensor.dtype) == "torch.bfloat16":
            tensor = tensor.view(sys.modules["torch"].int16)
        return np.from_dlpack(tensor.contiguous())
    return np.from_dlpack(value)


def _to_torch(column: Any, shape: tuple[int, ...], torch_dtype: str) -> Any:
    """A torch tensor of ``torch_dtype`` sharing ``column``'s memory (None without torch)."""
    try:
        import torch
    except ImportError:
        return None
    if len(column):
        tensor = torch.from_dlpack(column)
    else:
        tensor = torch.from_numpy(column.to_numpy(zero_copy_only=False).copy())
    wanted = getattr(torch, torch_dtype.removeprefix("torch."), None)
    if isinstance(wanted, torch.dtype) and tensor.dtype != wanted:
        tensor = tensor.view(wanted)
    return tensor.reshape(shape)
