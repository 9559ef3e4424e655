"""Atomic, streaming output of an HF model directory.

Every output tensor's name, dtype and shape is known from the plan before any arithmetic, so each shard's
safetensors header (and thus every tensor's byte offset) is written first and tensors are then written
straight into their final place with ``os.pwrite`` as they are computed, in any order, chunk by chunk.
Nothing accumulates in RAM. Everything goes into a temporary directory beside the target that is renamed
into place only when complete, so a failed or interrupted merge leaves no partial model behind.

The 4 KiB-aligned middle of every write goes through a second, ``O_DIRECT`` descriptor where the file
system supports it; only the unaligned edges (and the header) go through the page cache. Buffered writes
spend kernel CPU on page allocation, dirty accounting and writeback that compete with the merge for the
same cores, and vary widely from run to run; direct writes cost little CPU and run at the disk's speed,
overlapped with compute (the write path: docs/engine.md). ``staging`` hands out buffers whose address has
the right phase for a given file offset, so the direct write needs no bounce copy.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import shutil
import socket
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from modelmix import interrupt as interrupt_mod
from modelmix.errors import OutputError
from modelmix.io.outputs import (
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    check_output_dir,
    human_bytes,
    os_error,
    rename2,
    umask,
)
from modelmix.io.safetensors_file import TORCH_TO_ST, itemsize

ALIGN = 4096  # O_DIRECT offset/length/address alignment that every Linux block device accepts
_MIN_DIRECT = 64 * 1024  # smaller aligned middles are not worth a separate syscall
_BOUNCE = 4 << 20  # bytes per copy through the bounce buffer when a caller's memory is misaligned
_STAGE_MAX = 32 << 20  # staging buffers up to this size are kept per thread
_RING = 4  # staging buffers per computing thread: up to 3 writes in flight while it computes the next
_IO_THREADS = 2  # background direct writes in flight at once (queue depth for the device)


class _Stage:
    """One staging buffer and the background write (a Future) still reading from it."""

    __slots__ = ("buf", "fut")

    def __init__(self) -> None:
        self.buf: torch.Tensor | None = None
        self.fut = None


def _within(t: torch.Tensor, buf: torch.Tensor | None) -> bool:
    if buf is None:
        return False
    p, b = t.data_ptr(), buf.data_ptr()
    return b <= p and p + t.numel() <= b + buf.numel()


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


class ModelWriter:
    """Streams tensors into preplanned safetensors shards inside a temporary dir; ``commit`` renames it."""

    def __init__(self, target: Path, specs: list[OutSpec], *, max_shard_bytes: int, overwrite: bool,
                 direct_io: bool = True, extra_bytes: int = 0):
        self.target = Path(target).expanduser().absolute()
        self.direct_io = direct_io and hasattr(os, "O_DIRECT") and os.environ.get("MODELMIX_DIRECT_IO", "1") != "0"
        self._tls = threading.local()
        self._pool = None  # background direct-write threads, started on the first staged write
        self._pool_lock = threading.Lock()
        self._stages: list[_Stage] = []  # every thread's staging ring
        self.overwrite = overwrite
        check_target(self.target, overwrite)
        parent = self.target.parent
        total = sum(s.nbytes for s in specs)
        self._fds: list[int] = []
        self._lock_fd: int | None = None
        # missing parents are created, as mergekit does, and removed again if the merge does not complete
        self._made_dirs: list[Path] = []
        try:
            missing = [d for d in [parent, *parent.parents] if not d.exists()]
            for d in reversed(missing):
                d.mkdir()
                self._made_dirs.append(d)
            # the temporary directory is named after its host and process and locked (flock) while this
            # writer lives: a later merge to the same target removes the unlocked ones -- their process died
            # (a SIGKILL, a power cut) -- and no others
            self.tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(self.target.name), dir=parent))
        except OSError as e:
            self._remove_made_dirs()
            raise OutputError(f"Cannot create the output {self.target} (a temporary directory in {parent} "
                              f"first): {e.strerror or e}. Choose a writable output location.") from None
        self._where: dict[str, tuple[int, int | None, int, OutSpec]] = {}  # name -> (fd, direct fd, offset, spec)
        self.weight_map: dict[str, str] = {}
        try:  # from here on any failure, or a Ctrl-C, removes the temporary directory again
            self._lock_fd = _lock_dir(self.tmp)
            os.chmod(self.tmp, 0o777 & ~umask())  # mkdtemp makes it 0700; the output gets the user's umask
            _remove_stale(parent, self.target.name)
            free = shutil.disk_usage(parent).free
            if free < total + extra_bytes:
                raise OutputError(
                    f"Not enough free space for the merged model: it needs {human_bytes(total + extra_bytes)} "
                    f"but {parent} has {human_bytes(free)} free. Nothing was written."
                )
            shards = plan_shards(specs, max_shard_bytes)
            n = len(shards)
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
            raise os_error(e, self.target) from None
        except BaseException:  # e.g. a KeyboardInterrupt: no temporary directory may stay behind
            self.abort()
            raise
        self.total_bytes = total

    def _unlock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass

    def _remove_made_dirs(self) -> None:
        """Remove the (still empty) parent directories this writer created, innermost first."""
        for d in reversed(self._made_dirs):
            try:
                d.rmdir()
            except OSError:
                break
        self._made_dirs.clear()

    def _open_shard(self, path: Path, specs: list[OutSpec]) -> None:
        header: dict[str, object] = {"__metadata__": {"format": "pt"}}
        off = 0
        for s in specs:
            header[s.name] = {"dtype": TORCH_TO_ST[s.dtype], "shape": list(s.shape), "data_offsets": [off, off + s.nbytes]}
            off += s.nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        # pad the header with spaces (valid JSON whitespace, as the reference writer pads to 8) so the data
        # section starts on a 4 KiB boundary: tensor sizes are mostly multiples of 4 KiB, so most writes then
        # need no buffered edges at all
        raw += b" " * (-(8 + len(raw)) % ALIGN)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o666)  # the umask applies
        self._fds.append(fd)
        dfd = None
        if self.direct_io:
            try:
                dfd = os.open(path, os.O_WRONLY | os.O_DIRECT)  # type: ignore[attr-defined]
                self._fds.append(dfd)
            except OSError:  # tmpfs and some network file systems refuse O_DIRECT
                dfd = None
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
            self._where[s.name] = (fd, dfd, pos, s)
            pos += s.nbytes

    def staging(self, name: str, byte_start: int, nbytes: int) -> torch.Tensor | None:
        """A uint8 buffer of ``nbytes`` whose address is congruent to the write's file offset mod 4 KiB.

        Each thread cycles through a ring of _RING buffers; a buffer passed back to ``write`` is written
        to disk in the background (direct I/O blocks for the device, not the CPU), and is handed out again
        only once that write is done. None when direct I/O is off, the write is too large to stage, or the
        file offset is not a multiple of the tensor's item size (the buffer could not be viewed as it).
        """
        fd, dfd, off, spec = self._where[name]
        if dfd is None or nbytes > _STAGE_MAX or (off + byte_start) % spec.dtype.itemsize:
            return None
        ring = getattr(self._tls, "ring", None)
        if ring is None:
            ring = self._tls.ring = [_Stage() for _ in range(_RING)]
            self._tls.next = 0
            self._stages.extend(ring)
        st = ring[self._tls.next]
        self._tls.next = (self._tls.next + 1) % _RING
        self._wait(st)
        if st.buf is None or st.buf.numel() < nbytes + ALIGN:
            st.buf = torch.empty(max(nbytes, 1 << 20) + ALIGN, dtype=torch.uint8)
        shift = (off + byte_start - st.buf.data_ptr()) % ALIGN
        self._tls.last = st
        return st.buf[shift:shift + nbytes]

    def _wait(self, st: _Stage) -> None:
        fut = st.fut
        if fut is not None:
            try:
                fut.result()
            except OSError as e:
                st.fut = None
                raise os_error(e, self.target) from None
            st.fut = None  # only once done: an interrupted wait leaves it for abort() to wait for again

    def write(self, name: str, tensor: torch.Tensor, byte_start: int = 0) -> None:
        """Write ``tensor`` (already in the output dtype) at ``byte_start`` within output tensor ``name``.

        The aligned middle of a tensor that lives in this thread's latest staging buffer is written in the
        background; everything else is written before returning.
        """
        fd, dfd, off, spec = self._where[name]
        t = tensor.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        t = t.contiguous().reshape(-1)
        if t.dtype != spec.dtype:
            raise ValueError(f"{name}: writing {t.dtype} into a {spec.dtype} slot")
        raw = t.view(torch.uint8)
        n = raw.numel()
        if byte_start + n > spec.nbytes:
            raise ValueError(f"{name}: write past the end of the tensor")
        pos = off + byte_start
        a0 = -(-pos // ALIGN) * ALIGN
        a1 = (pos + n) // ALIGN * ALIGN
        try:
            if dfd is None or a1 - a0 < _MIN_DIRECT:
                self._pwrite(fd, raw, pos)
                return
            self._pwrite(fd, raw[: a0 - pos], pos)
            self._pwrite(fd, raw[a1 - pos:], a1)
            mid = raw[a0 - pos: a1 - pos]
            st = getattr(self._tls, "last", None)
            self._tls.last = None
            if st is not None and mid.data_ptr() % ALIGN == 0 and _within(mid, st.buf):
                st.fut = self._io_pool().submit(self._direct, fd, dfd, mid, a0)
            else:
                self._direct(fd, dfd, mid, a0)
        except OSError as e:
            raise os_error(e, self.target) from None

    def _direct(self, fd: int, dfd: int, mid: torch.Tensor, pos: int) -> None:
        """Direct-write an aligned range (through the bounce buffer if its memory is misaligned); buffered if
        the file system refuses (EINVAL), and buffered for all later writes too."""
        try:
            if mid.data_ptr() % ALIGN == 0:
                self._pwrite(dfd, mid, pos)
            else:
                self._bounce(dfd, mid, pos)
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            self._where = {k: (f, None, o, sp) for k, (f, _, o, sp) in self._where.items()}
            self._pwrite(fd, mid, pos)

    def flush(self) -> None:
        """Wait for every background write; raise the first error."""
        for st in list(self._stages):
            self._wait(st)

    def _bounce(self, dfd: int, mid: torch.Tensor, pos: int) -> None:
        """Direct-write misaligned memory by copying it through an aligned per-thread buffer."""
        buf = getattr(self._tls, "bounce", None)
        if buf is None:
            buf = self._tls.bounce = torch.empty(_BOUNCE + ALIGN, dtype=torch.uint8)
        shift = -buf.data_ptr() % ALIGN
        aligned = buf[shift:shift + _BOUNCE]
        for i in range(0, mid.numel(), _BOUNCE):
            part = mid[i:i + _BOUNCE]
            aligned[: part.numel()].copy_(part)
            self._pwrite(dfd, aligned[: part.numel()], pos + i)

    @staticmethod
    def _pwrite(fd: int, raw: torch.Tensor, pos: int) -> None:
        if raw.numel() == 0:
            return
        buf = memoryview(raw.numpy()).cast("B")
        done = 0
        while done < len(buf):
            k = os.pwrite(fd, buf[done:], pos + done)
            if k <= 0:  # no progress: report instead of spinning
                raise OSError(errno.EIO, "write made no progress")
            done += k

    def path(self, rel: str) -> Path:
        """Where to put an auxiliary file (config, tokenizer, README) inside the pending output dir."""
        return self.tmp / rel

    def commit(self, interrupt: interrupt_mod.Interrupt | None = None) -> Path:
        """Flush, then move the finished directory into place (replacing the target only with overwrite).

        The rename is the commit point. Before it, a failure or a pending Ctrl-C (``interrupt``, checked
        once every write has landed and every file is closed) aborts: the temporary directory is removed
        and an existing target is left as it was. With overwrite the new and the old output swap places in
        one ``renameat2(RENAME_EXCHANGE)`` where the system has it, so no kill can leave the target missing;
        elsewhere the old output is moved aside first and put back if the new one cannot be renamed in.
        After it, the merge is complete and ``interrupt`` ignores Ctrl-C; only the removal of the replaced
        output remains.
        """
        try:
            self.flush()
            if self._shutdown():
                raise KeyboardInterrupt  # arrived (undeferred) while the I/O threads were being joined
            for fd in self._fds:
                os.close(fd)
            self._fds.clear()
            if interrupt is not None:
                interrupt.check()  # the last moment a Ctrl-C aborts the merge
            trash = None
            replaced = None  # the old output, swapped out atomically to where the temporary directory was
            if self.target.exists() or self.target.is_symlink():
                if not self.overwrite:
                    raise OutputError(f"Output directory {self.target} appeared during the merge; not replacing it.")
            if (self.target.exists() or self.target.is_symlink()) and rename2(self.tmp, self.target, RENAME_EXCHANGE):
                replaced = self.tmp  # no moment without an output at the target, whatever kills the process
            elif self.target.exists() or self.target.is_symlink():
                trash = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.old-", dir=self.target.parent))
                try:
                    os.rename(self.target, trash / "old")
                except BaseException:
                    os.rmdir(trash)
                    raise
                try:
                    os.rename(self.tmp, self.target)
                except BaseException:
                    os.rename(trash / "old", self.target)  # the old output goes back where it was
                    os.rmdir(trash)
                    raise
            elif not rename2(self.tmp, self.target, RENAME_NOREPLACE):
                if self.target.exists() or self.target.is_symlink():  # appeared since the check above
                    raise OutputError(f"Output directory {self.target} appeared during the merge; not replacing it.")
                os.rename(self.tmp, self.target)
            self._committed = True
            self._unlock()
            if interrupt is not None:
                interrupt.commit()
        except OSError as e:
            self.abort()
            raise os_error(e, self.target) from None
        except BaseException:
            self.abort()
            raise
        if trash is not None:
            interrupt_mod.uninterrupted(lambda: shutil.rmtree(trash, ignore_errors=True))
        if replaced is not None:
            interrupt_mod.uninterrupted(lambda: _remove(replaced))
        return self.target

    _closed = False  # I/O threads shut down (commit or abort): no background write may start any more
    _committed = False

    def _io_pool(self):
        with self._pool_lock:  # one pool, however many threads make their first staged write at once
            if self._closed:
                raise OutputError(f"Writing {self.target} failed: the output was already closed.")
            if self._pool is None:
                from concurrent.futures import ThreadPoolExecutor

                self._pool = ThreadPoolExecutor(_IO_THREADS, thread_name_prefix="modelmix-io")
            return self._pool

    def _shutdown(self) -> bool:
        """Join the background I/O threads; whether a KeyboardInterrupt arrived meanwhile (the shutdown is
        repeated until it completes). Callers first wait for every staged write (``flush``/``abort``): a
        ``Thread.join`` interrupted by KeyboardInterrupt marks a still-running thread stopped in Python
        3.11, so only idle threads may be joined where Ctrl-C is not deferred."""
        with self._pool_lock:
            pool, self._pool, self._closed = self._pool, None, True
        if pool is None:
            return False
        return interrupt_mod.uninterrupted(lambda: pool.shutdown(wait=True))

    def abort(self) -> None:
        """Remove everything this writer created. Always completes: the caller is already failing or
        interrupted, so a Ctrl-C arriving meanwhile (when it was not deferred) is absorbed; the caller has
        joined every thread that writes (the executor does), and the I/O threads are joined here first."""
        if self._committed:
            return
        for st in list(self._stages):
            try:
                self._wait(st)
            except BaseException:  # noqa: BLE001 - aborting anyway; _shutdown below still waits for it
                pass
        self._shutdown()
        for fd in self._fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds.clear()
        self._unlock()
        interrupt_mod.uninterrupted(lambda: shutil.rmtree(self.tmp, ignore_errors=True))
        self._remove_made_dirs()


def _host_tag() -> str:
    return re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname() or "host")


def _tmp_prefix(name: str) -> str:
    return f".{name}.modelmix-{_host_tag()}-{os.getpid()}-"


def _lock_dir(d: Path) -> int:
    """An open descriptor of ``d`` holding an exclusive flock: released when the process ends, however."""
    import fcntl

    fd = os.open(d, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise
    return fd


def _remove_stale(parent: Path, name: str) -> None:
    """Remove temporary directories of earlier merges to ``name`` on this host that nobody holds locked any
    more: their process died. A running merge (of any user, in any PID namespace) holds its lock; another
    host's is left alone (flock may not reach across a network file system)."""
    import fcntl

    pat = re.compile(rf"\.{re.escape(name)}\.modelmix-{re.escape(_host_tag())}-\d+-[A-Za-z0-9_]+")
    try:
        entries = list(parent.iterdir())
    except OSError:
        return
    for d in entries:
        if pat.fullmatch(d.name) is None or d.is_symlink() or not d.is_dir():
            continue
        try:
            fd = os.open(d, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # locked: its merge is running
        finally:
            os.close(fd)
        shutil.rmtree(d, ignore_errors=True)


def _remove(p: Path) -> None:
    if p.is_symlink() or p.is_file():
        p.unlink(missing_ok=True)
    else:
        shutil.rmtree(p, ignore_errors=True)


def check_target(target: Path, overwrite: bool) -> None:
    """Fail early (before any work) if the output location cannot be used (see ``modelmix.io.outputs``)."""
    check_output_dir(target, overwrite=overwrite)
