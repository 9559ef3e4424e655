"""Minimal safetensors header parsing and positional reads.

We parse the header ourselves and read tensor bytes with ``os.preadv`` into caller-owned buffers instead
of memory-mapping files: a mapped file's touched pages count towards the process RSS until unmapped,
which is how a naive merge of a 1B model ends up holding gigabytes. A pread from the page cache is one
memcpy, and the buffers are reused, so peak memory stays at a few chunks whatever the model size.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from modelmix.errors import InputError

# safetensors dtype string -> (torch dtype, itemsize)
ST_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
for _name, _attr in (("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2")):
    if hasattr(torch, _attr):
        ST_DTYPES[_name] = getattr(torch, _attr)
TORCH_TO_ST = {v: k for k, v in ST_DTYPES.items()}

_MAX_HEADER = 100 * 1024 * 1024


def itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor's bytes live: ``file`` at absolute byte ``offset``."""

    name: str
    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int
    nbytes: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def row_bytes(self) -> int:
        """Bytes per leading-dimension row (the whole tensor for 0-d tensors)."""
        if not self.shape or self.shape[0] == 0:
            return self.nbytes
        return self.nbytes // self.shape[0]


def read_header(path: Path) -> tuple[dict[str, TensorEntry], dict[str, str]]:
    """Parse and validate a safetensors file's header; returns (entries, metadata)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise InputError(f"{path} is not a safetensors file: it is only {size} bytes long.")
            (hlen,) = struct.unpack("<Q", head)
            if hlen > _MAX_HEADER or 8 + hlen > size:
                raise InputError(
                    f"{path} is truncated or not a safetensors file: its header claims {hlen} bytes "
                    f"but the file has {size} bytes."
                )
            raw = f.read(hlen)
    except OSError as e:
        raise InputError(f"Cannot read checkpoint file {path}: {e.strerror or e}.") from None
    try:
        header = json.loads(raw)
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(f"{path} is corrupt: its safetensors header is not valid JSON ({e}).") from None
    meta = header.pop("__metadata__", None) or {}
    data_start = 8 + hlen
    entries: dict[str, TensorEntry] = {}
    for name, spec in header.items():
        try:
            dtype = ST_DTYPES[spec["dtype"]]
            shape = tuple(int(s) for s in spec["shape"])
            begin, end = (int(x) for x in spec["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise InputError(
                f"{path} is corrupt: the header entry for tensor {name!r} is malformed or has an "
                f"unsupported dtype ({spec!r:.120})."
            ) from None
        nbytes = math.prod(shape) * itemsize(dtype)
        if end - begin != nbytes or begin < 0:
            raise InputError(
                f"{path} is corrupt: tensor {name!r} of shape {list(shape)} and dtype {spec['dtype']} needs "
                f"{nbytes} bytes but its header gives the byte range {begin}..{end}."
            )
        if data_start + end > size:
            raise InputError(
                f"{path} is truncated: tensor {name!r} ends at byte {data_start + end} but the file has only "
                f"{size} bytes. Re-download or re-save this checkpoint."
            )
        entries[name] = TensorEntry(name, path, dtype, shape, data_start + begin, nbytes)
    return entries, {str(k): str(v) for k, v in meta.items()}


class FileReader:
    """Keeps one read-only descriptor per file and reads byte ranges into preallocated buffers."""

    def __init__(self) -> None:
        self._fds: dict[Path, int] = {}

    def _fd(self, path: Path) -> int:
        fd = self._fds.get(path)
        if fd is None:
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError as e:
                raise InputError(f"Cannot open checkpoint file {path}: {e.strerror or e}.") from None
            self._fds[path] = fd
        return fd

    def read_into(self, entry: TensorEntry, out: torch.Tensor, byte_start: int = 0, nbytes: int | None = None) -> None:
        """Fill ``out`` (contiguous CPU tensor of entry.dtype) with bytes [byte_start, byte_start+nbytes)."""
        n = entry.nbytes - byte_start if nbytes is None else nbytes
        view = memoryview(out.reshape(-1).view(torch.uint8).numpy()).cast("B") if n else memoryview(b"")
        if n and len(view) < n:
            raise ValueError("read buffer too small")
        fd = self._fd(entry.file)
        pos, got = entry.offset + byte_start, 0
        while got < n:
            k = os.preadv(fd, [view[got:n]], pos + got)
            if k <= 0:
                raise InputError(f"{entry.file} is truncated: could not read tensor {entry.name!r}.")
            got += k

    def read(self, entry: TensorEntry, rows: tuple[int, int] | None = None) -> torch.Tensor:
        """Read a whole tensor (or a row range) into a new tensor of its stored dtype."""
        if rows is None:
            out = torch.empty(entry.shape, dtype=entry.dtype)
            self.read_into(entry, out)
            return out
        r0, r1 = rows
        out = torch.empty((r1 - r0, *entry.shape[1:]), dtype=entry.dtype)
        self.read_into(entry, out, r0 * entry.row_bytes, (r1 - r0) * entry.row_bytes)
        return out

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass
