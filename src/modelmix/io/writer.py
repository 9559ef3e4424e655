"""Atomic, streaming output of an HF model directory.

Every output tensor's name, dtype and shape is known from the plan before any arithmetic, so each shard's
safetensors header (and thus every tensor's byte offset) is written first and tensors are then written
straight into their final place with ``os.pwrite`` as they are computed, in any order, chunk by chunk.
Nothing accumulates in RAM. Everything goes into a temporary directory beside the target that is renamed
into place only when complete, so a failed or interrupted merge leaves no partial model behind.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from modelmix.errors import OutputError
from modelmix.io.safetensors_file import TORCH_TO_ST, itemsize


@dataclass(frozen=True)
class OutSpec:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * itemsize(self.dtype)


def plan_shards(specs: list[OutSpec], max_shard_bytes: int) -> list[list[OutSpec]]:
    """Greedy split in plan order; a tensor larger than the limit gets a shard of its own."""
    shards: list[list[OutSpec]] = [[]]
    size = 0
    for s in specs:
        if shards[-1] and size + s.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(s)
        size += s.nbytes
    return shards


def _oserror(e: OSError, where: Path) -> OutputError:
    if e.errno == errno.ENOSPC:
        return OutputError(f"No space left on the device while writing {where}. Free some space or choose another output location; nothing was written to the target.")
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return OutputError(f"Cannot write to {where}: {e.strerror}. Choose a writable output location.")
    return OutputError(f"Writing {where} failed: {e.strerror or e}.")


class ModelWriter:
    """Streams tensors into preplanned safetensors shards inside a temporary dir; ``commit`` renames it."""

    def __init__(self, target: Path, specs: list[OutSpec], *, max_shard_bytes: int, overwrite: bool):
        self.target = Path(target).absolute()
        self.overwrite = overwrite
        check_target(self.target, overwrite)
        parent = self.target.parent
        total = sum(s.nbytes for s in specs)
        try:
            free = shutil.disk_usage(parent).free
        except OSError as e:
            raise _oserror(e, parent) from None
        if free < total:
            raise OutputError(
                f"Not enough free space for the merged model: it needs {total / 1e9:.2f} GB but {parent} has "
                f"{free / 1e9:.2f} GB free. Nothing was written."
            )
        try:
            self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.modelmix-", dir=parent))
        except OSError as e:
            raise _oserror(e, parent) from None
        self._fds: list[int] = []
        self._where: dict[str, tuple[int, int, OutSpec]] = {}  # name -> (fd, offset, spec)
        shards = plan_shards(specs, max_shard_bytes)
        n = len(shards)
        self.weight_map: dict[str, str] = {}
        try:
            for i, shard in enumerate(shards):
                fname = "model.safetensors" if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"
                self._open_shard(self.tmp / fname, shard)
                for s in shard:
                    self.weight_map[s.name] = fname
            if n > 1:
                index = {"metadata": {"total_size": total}, "weight_map": self.weight_map}
                (self.tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
        except OSError as e:
            self.abort()
            raise _oserror(e, self.target) from None
        self.total_bytes = total

    def _open_shard(self, path: Path, specs: list[OutSpec]) -> None:
        header: dict[str, object] = {"__metadata__": {"format": "pt"}}
        off = 0
        for s in specs:
            header[s.name] = {"dtype": TORCH_TO_ST[s.dtype], "shape": list(s.shape), "data_offsets": [off, off + s.nbytes]}
            off += s.nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # align the data section like the reference writer does
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        self._fds.append(fd)
        os.pwrite(fd, len(raw).to_bytes(8, "little") + raw, 0)
        data_start = 8 + len(raw)
        try:
            os.posix_fallocate(fd, 0, data_start + off) if hasattr(os, "posix_fallocate") else None
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise
            os.ftruncate(fd, data_start + off)  # filesystems without fallocate support
        pos = data_start
        for s in specs:
            self._where[s.name] = (fd, pos, s)
            pos += s.nbytes

    def write(self, name: str, tensor: torch.Tensor, byte_start: int = 0) -> None:
        """Write ``tensor`` (already in the output dtype) at ``byte_start`` within output tensor ``name``."""
        fd, off, spec = self._where[name]
        t = tensor.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        t = t.contiguous().reshape(-1)
        if t.dtype != spec.dtype:
            raise ValueError(f"{name}: writing {t.dtype} into a {spec.dtype} slot")
        buf = memoryview(t.view(torch.uint8).numpy()).cast("B")
        if byte_start + len(buf) > spec.nbytes:
            raise ValueError(f"{name}: write past the end of the tensor")
        done = 0
        try:
            while done < len(buf):
                done += os.pwrite(fd, buf[done:], off + byte_start + done)
        except OSError as e:
            raise _oserror(e, self.target) from None

    def path(self, rel: str) -> Path:
        """Where to put an auxiliary file (config, tokenizer, README) inside the pending output dir."""
        return self.tmp / rel

    def commit(self) -> Path:
        """Flush, then move the finished directory into place (replacing the target only with overwrite)."""
        try:
            for fd in self._fds:
                os.close(fd)
            self._fds.clear()
            if self.target.exists() or self.target.is_symlink():
                if not self.overwrite:
                    raise OutputError(f"Output directory {self.target} appeared during the merge; not replacing it.")
                trash = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.old-", dir=self.target.parent))
                os.rename(self.target, trash / "old")
                os.rename(self.tmp, self.target)
                shutil.rmtree(trash, ignore_errors=True)
            else:
                os.rename(self.tmp, self.target)
        except OSError as e:
            self.abort()
            raise _oserror(e, self.target) from None
        except BaseException:
            self.abort()
            raise
        return self.target

    def abort(self) -> None:
        for fd in self._fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds.clear()
        shutil.rmtree(self.tmp, ignore_errors=True)


def check_target(target: Path, overwrite: bool) -> None:
    """Fail early (before any work) if the output location cannot be used."""
    if target.exists() and not overwrite:
        raise OutputError(f"Output directory {target} already exists. Pass --overwrite to replace it (it is replaced only once the new model is complete).")
    if target.exists() and not target.is_dir():
        raise OutputError(f"Output path {target} exists and is not a directory.")
    parent = target.parent
    if not parent.is_dir():
        raise OutputError(f"Cannot create {target}: parent directory {parent} does not exist.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"Cannot write to {parent}: permission denied. Choose a writable output location.")
