"""Streaming executor: runs a MergePlan, reading each input byte once and writing each output byte once.

Work is cut into units: row chunks of cache-friendly size for element-wise methods, the method's multi-pass
row-chunk streamer per tensor for methods that need per-tensor statistics (``Method.streamer``; a tensor up
to the chunk size runs it as one in-memory chunk), whole tensors for the rest. A row chunk whose inputs are
all bf16 goes through the method's one-pass kernel (``Method.fast_bf16``) where it declares one. The
executor knows methods only by these declarations, never by name.
``threads`` worker threads each take a unit, read its inputs with pread, convert to float32, check for
NaN/Inf, run the method, cast and pwrite the result into its final place in the output shard. A byte
budget bounds how many whole-tensor units are in flight.

Torch's intra-op thread count is pinned to 1 for the whole run, whatever ``threads`` (also for
``threads=1``): reading, computing and writing of different units overlap across the workers without
oversubscription, and -- the reason it is not left at torch's default for a single worker -- torch splits
a reduction (a sum, a norm, BLAS/LAPACK work) among its threads and adds the partial results, so the last
bits of a whole-tensor method (Karcher, multislerp, SCE, subspace) would change with the thread count.
With one intra-op thread, and the streamers' fixed-partition statistics (``modelmix.kernels.reduce``), a
seeded merge is bit-identical for any ``threads`` and ``chunk_elems``.
"""

from __future__ import annotations

import math
import os
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from modelmix import interrupt
from modelmix.errors import InputError, ModelmixError, OutputError
from modelmix.methods.registry import Streamer
from modelmix.planner import MergePlan, Source, TensorTask
from modelmix.runtime import Progress, bound_malloc

# 1M float32 = 4 MiB per operand: few enough chunks that per-chunk Python costs vanish (halving it measurably
# slowed 1.1B merges), small enough that a few chunks per thread stay in cache-friendly buffers
CHUNK_ELEMS = 1 << 20
DEFAULT_BUDGET = 1 << 30  # bytes of whole-tensor working memory in flight at once
# A streamed tensor whose float32 inputs fit in this many bytes is read and converted once, on its first
# pass, into a per-thread cache that later passes reuse: TIES walks a tensor three times, and re-reading
# from the page cache (a copy) plus re-converting cost more than the arithmetic. 160 MiB holds the three
# inputs of an 11.5M-element Llama MLP matrix; embeddings and lm_head stay streamed.
STREAM_CACHE_BYTES = 160 << 20


class _CancelFlag(Protocol):
    def is_set(self) -> bool: ...


class _Cancelled(BaseException):
    """A unit stopped at a chunk boundary because the run is being cancelled (Ctrl-C, or another unit's
    error). A BaseException, so that no ``except Exception`` in a method or reader swallows it."""


@dataclass
class Unit:
    task: TensorTask
    rows: tuple[int, int] | None  # None: the whole tensor
    cost: int  # estimated working bytes
    stream: bool = False  # whole tensor, computed by the method's multi-pass row-chunk streamer


def _fused():
    """Kernels for the bf16 conversion and fast paths: C when built; numba only once a streamer has loaded
    it anyway (importing numba costs ~0.5 s, more than the fused conversion saves in a one-pass merge)."""
    from modelmix.kernels.backend import kernels

    return kernels(loaded_only=True)


def _streamer(task: TensorTask) -> Streamer | None:
    """The method's streamer when it handles this task, else None (also for empty and 0-d tensors and
    vocabulary-aligned ones, which the whole-tensor reference computes)."""
    if task.method is None or task.vocab_maps is not None or not task.shape or math.prod(task.shape) == 0:
        return None
    st = task.method.streamer
    if st is None or not st.applies(task.shape, {**task.global_params, **task.model_params}):
        return None
    return st


def _cacheable(task: TensorTask, n_in: int) -> bool:
    st = _streamer(task)
    return st is not None and st.cache and n_in * math.prod(task.shape) * 4 <= STREAM_CACHE_BYTES


def _units(plan: MergePlan, chunk_elems: int) -> Iterator[Unit]:
    """Row chunks for element-wise methods, a streamed unit for a larger tensor of a method with a streamer,
    whole tensors for the rest. A whole tensor of a method with a streamer is computed by that streamer too,
    as one in-memory chunk (``compute``): the same implementation, with the same fixed-partition statistics,
    computes a tensor whatever ``chunk_elems``."""
    for task in plan.tasks:
        numel = math.prod(task.shape)
        n_in = len(task.sources) + (task.base is not None)
        streamable = (task.method is None or task.method.elementwise) and task.vocab_maps is None
        if not streamable and numel > chunk_elems and _streamer(task) is not None:
            row = numel // task.shape[0]
            cache = n_in * numel * 4 if _cacheable(task, n_in) else 0
            chunk = min(numel, max(1, chunk_elems // max(row, 1)) * row)
            yield Unit(task, None, chunk * 4 * (n_in + 6) + cache, stream=True)
        elif streamable and task.shape and numel > chunk_elems:
            row = numel // task.shape[0]
            step = max(1, chunk_elems // max(row, 1))
            for r0 in range(0, task.shape[0], step):
                r1 = min(task.shape[0], r0 + step)
                yield Unit(task, (r0, r1), (r1 - r0) * row * 4 * (n_in + 2))
        else:
            yield Unit(task, None, numel * 4 * (n_in + 3))


class _Budget:
    """Counting semaphore over bytes; a unit larger than the whole budget runs alone."""

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0
        self.cv = threading.Condition()

    def acquire(self, n: int) -> int:
        n = min(n, self.limit)
        with self.cv:
            while self.used + n > self.limit:
                self.cv.wait()
            self.used += n
        return n

    def release(self, n: int) -> None:
        with self.cv:
            self.used -= n
            self.cv.notify_all()


class Executor:
    def __init__(self, plan: MergePlan, *, device: str = "cpu", threads: int | None = None, budget: int = DEFAULT_BUDGET,
                 chunk_elems: int | None = None):
        self.plan = plan
        from modelmix.devices import check_device

        self.device = torch.device(check_device(device))
        self.threads = max(1, threads or os.cpu_count() or 1)
        self.budget = _Budget(budget)
        self.chunk_elems = chunk_elems or CHUNK_ELEMS
        self._remaining: dict[str, int] = {}
        self._tls = threading.local()
        self._staging: Callable[[TensorTask, int, int], torch.Tensor | None] | None = None

    # ------------------------------------------------------------------ public
    def run(self, sink: Callable[[TensorTask, torch.Tensor, int], None], progress: Progress | None = None,
            staging: Callable[[TensorTask, int, int], torch.Tensor | None] | None = None,
            cancel: _CancelFlag | None = None) -> None:
        """Compute every unit; ``sink(task, out_tensor_in_out_dtype, byte_offset)`` stores the result.

        ``staging(task, byte_offset, nbytes)`` may return a uint8 CPU buffer to cast each result into (the
        writer's aligned buffers for direct I/O); the cast then costs no allocation.

        ``cancel`` (anything with ``is_set()``: a ``threading.Event``, ``modelmix.interrupt.Interrupt``) is
        checked before every unit and every row chunk read or written; once it is set no unit starts, running
        ones stop at their next chunk, and when every worker has been joined KeyboardInterrupt is raised. An
        error in one unit stops the others the same way and is raised once they have been joined. However
        ``run`` ends -- also by a KeyboardInterrupt arriving in the calling thread -- no worker is left
        running, so the caller can remove the output.
        """
        bound_malloc()
        # largest tensors first (stable: row chunks keep their order): a 65M-element lm_head streamed in
        # three passes at the end of the plan would otherwise leave one worker busy and the other idle
        units = sorted(_units(self.plan, self.chunk_elems), key=lambda u: -math.prod(u.task.shape))
        for u in units:
            self._remaining[u.task.name] = self._remaining.get(u.task.name, 0) + 1
        lock = threading.Lock()
        prev_threads = torch.get_num_threads()
        torch.set_num_threads(1)  # always: torch splits reductions (and BLAS/LAPACK work) by its thread count
        self._cancel, self._stop = cancel, False

        def checked_sink(task: TensorTask, x: torch.Tensor, off: int) -> None:
            self._check()  # per output chunk, as reads check per input chunk: a cancel stops units promptly
            sink(task, x, off)

        def checked_staging(task: TensorTask, off: int, n: int) -> torch.Tensor | None:
            self._check()
            return staging(task, off, n) if staging is not None else None

        self._staging = checked_staging if staging is not None else None
        try:
            try:
                if self.threads == 1:
                    for u in units:
                        self._do(u, checked_sink, progress, lock)
                else:
                    self._run_workers(units, checked_sink, progress, lock)
            except _Cancelled:
                raise KeyboardInterrupt from None  # every thread has stopped: the caller may clean up now
        finally:
            torch.set_num_threads(prev_threads)

    _cancel: _CancelFlag | None = None
    _stop = False  # set by a failing unit or an undeferred KeyboardInterrupt: the other units stop too

    def _halt(self) -> None:
        self._stop = True

    def _check(self) -> None:
        """Raise _Cancelled if the run is being stopped (a per-chunk cost of two attribute reads)."""
        if self._stop or (self._cancel is not None and self._cancel.is_set()):
            raise _Cancelled

    def _run_workers(self, units: list[Unit], sink, progress: Progress | None, lock: threading.Lock) -> None:
        """Run the units on ``self.threads`` worker threads, at most 4 per thread queued ahead.

        Every worker has finished before this returns or raises, whatever reaches the calling thread (an
        error, a KeyboardInterrupt, another one while waiting): a worker left running would write into files
        the writer closes and a directory it removes, and a worker inside a torch op when the interpreter
        finalises aborts the process (``terminate called without an active exception``).
        """
        errors: list[BaseException] = []
        todo: queue.SimpleQueue[Unit | None] = queue.SimpleQueue()
        slots = threading.BoundedSemaphore(4 * self.threads)

        def work(done: threading.Event) -> None:
            # OpenMP's thread count is per OS thread: the caller's set_num_threads(1) does not reach a new
            # thread, whose LAPACK calls (subspace's QR/SVD) would then split work differently and change bits
            torch.set_num_threads(1)
            try:
                while (u := todo.get()) is not None:
                    try:
                        self._do(u, sink, progress, lock)
                    except _Cancelled:
                        pass
                    except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
                        errors.append(e)
                        self._stop = True
                    finally:
                        slots.release()
            finally:
                done.set()

        done = [threading.Event() for _ in range(self.threads)]
        workers = [threading.Thread(target=work, args=(d,), name=f"modelmix-{i}") for i, d in enumerate(done)]
        started: list[threading.Thread] = []
        try:
            for w in workers:
                w.start()
                started.append(w)
            for u in units:
                slots.acquire()  # wakes as soon as a worker finishes or abandons a unit
                if self._stop or (self._cancel is not None and self._cancel.is_set()):
                    break
                todo.put(u)
        except BaseException:  # an undeferred KeyboardInterrupt (or a thread that could not start)
            self._stop = True
            raise
        finally:
            for _ in workers:
                todo.put(None)
            # Wait on the workers' own events, not Thread.join: in Python 3.11 a join interrupted by
            # KeyboardInterrupt (Ctrl-C when it is not deferred) marks the still-running thread stopped,
            # so no later join -- not even the interpreter's at exit -- waits for it any more.
            hit = False
            for d in done[:len(started)]:
                hit |= interrupt.uninterrupted(d.wait, on_interrupt=self._halt)
            for w in started:
                w.join()  # returns at once: the worker has left its loop
            if hit:  # Ctrl-C while waiting: the workers were told to stop and have all finished
                raise KeyboardInterrupt
        if errors:
            raise errors[0]
        self._check()

    # ------------------------------------------------------------------ one unit
    def _do(self, u: Unit, sink, progress: Progress | None, lock: threading.Lock) -> None:
        self._check()
        held = self.budget.acquire(u.cost)
        try:
            self._check()  # the wait for budget can be long
            if u.stream:
                self._stream(u.task, sink, progress, lock)
                return
            offset = 0
            if u.rows is not None:
                offset = u.rows[0] * math.prod(u.task.shape[1:]) * u.task.out_dtype.itemsize
            ob = self._fast_bf16(u.task, u.rows, offset)
            if ob is None:
                out = self.compute(u.task, u.rows)
                ob = self._cast(u.task, out, offset)
            sink(u.task, ob, offset)
            with lock:
                self._remaining[u.task.name] -= 1
                finished = self._remaining[u.task.name] == 0
            if progress is not None:
                progress.update(ob.numel() * ob.element_size(), finished)
        finally:
            self.budget.release(held)

    def _stream(self, task: TensorTask, sink, progress: Progress | None, lock: threading.Lock) -> None:
        """Run a multi-pass streamer over the task's row chunks; each emitted chunk goes straight to the sink."""
        fn = _streamer(task).run  # type: ignore[union-attr]
        row = math.prod(task.shape[1:])
        step = max(1, self.chunk_elems // max(row, 1))
        ex = self

        inputs = [*task.sources, *([task.base] if task.base is not None else [])]
        numel = math.prod(task.shape)
        cache = None
        if (self.device.type == "cpu" and _cacheable(task, len(inputs))
                and all(self.plan.models[s.model].can_read_into(s.name) for s in inputs)):
            cache = self._buffer(("cache",), (len(inputs), numel), torch.float32)

        class Src:
            device = ex.device.type
            shape = task.shape
            numel = math.prod(task.shape)

            passes = 0

            def chunks(self):
                first = self.passes == 0  # inputs are read (and validated) on the first pass only
                self.passes += 1
                for r0 in range(0, task.shape[0], step):
                    rows = (r0, min(task.shape[0], r0 + step))
                    if cache is None:
                        vals = [ex._load(task, s, rows, i, first) for i, s in enumerate(inputs)]
                    else:
                        shape = (rows[1] - rows[0], *task.shape[1:])
                        vals = [cache[i, rows[0] * row: rows[1] * row].view(shape) for i in range(len(inputs))]
                        if first:
                            for i, s in enumerate(inputs):
                                ex._load(task, s, rows, i, True, into=vals[i])
                    if task.base is not None:
                        yield rows, vals[:-1], vals[-1]
                    else:
                        yield rows, vals, None

            def emit(self, rows, out):
                offset = rows[0] * row * task.out_dtype.itemsize
                ob = ex._cast(task, out, offset)
                sink(task, ob, offset)
                if progress is not None:
                    progress.update(ob.numel() * ob.element_size(), False)

            # raw access for streamers with bf16 kernels: inputs as uint16 bits, output buffers
            raw_bf16 = (ex.device.type == "cpu" and task.out_dtype in (torch.bfloat16, torch.float32)
                        and ex._all_bf16(inputs))

            def raw_chunks(self):
                """(rows, [uint16 arrays of the sources], uint16 array of the base) per row chunk, in order."""
                for r0 in range(0, task.shape[0], step):
                    rows = (r0, min(task.shape[0], r0 + step))
                    vals = ex._read_bf16_bits(task, inputs, rows)
                    if task.base is not None:
                        yield rows, vals[:-1], vals[-1]
                    else:
                        yield rows, vals, None

            def invalid(self, rows):
                """Raise the standard NaN/Inf error for a row chunk a kernel found non-finite."""
                for i, s in enumerate(inputs):
                    ex._load(task, s, rows, i, True)

            def out_buffer(self, rows):
                """Where a raw streamer writes the output chunk (uint16 bits for bf16, else float32)."""
                self._ob, dst = ex._out_buffer(task, rows[0] * row * task.out_dtype.itemsize, (rows[1] - rows[0]) * row)
                return dst

            def emit_buffer(self, rows):
                ob = self._ob.view((rows[1] - rows[0], *task.shape[1:]))
                sink(task, ob, rows[0] * row * task.out_dtype.itemsize)
                if progress is not None:
                    progress.update(ob.numel() * ob.element_size(), False)

        kwargs = {**task.global_params, **task.model_params}
        if task.method.random:  # type: ignore[union-attr]
            kwargs["seed"] = task.seed
        try:
            fn(Src(), **kwargs)
        except OutputError:
            raise  # output errors (a background write failing) are not this tensor's
        except ModelmixError as e:
            raise type(e)(f"Tensor {task.name!r}: {e}") from None
        with lock:
            self._remaining[task.name] -= 1
        if progress is not None:
            progress.update(0, True)

    def _fast_bf16(self, task: TensorTask, rows: tuple[int, int] | None, offset: int) -> torch.Tensor | None:
        """A row chunk of bf16 inputs through the method's one-pass kernel (``Method.fast_bf16``), straight
        into the output buffer.

        The generic path converts every input to float32, runs the torch reference and casts the result;
        the fast path reads the bf16 bits and computes and rounds in one sweep with the same float32
        operations (bit-identical; checked in tests). None when it does not apply: no fast path, other
        dtypes, LoRA inputs, no compiled kernels, the method's own conditions, or a NaN/Inf in the inputs
        (the generic path then reports it).
        """
        fast = task.method.fast_bf16 if task.method is not None else None
        if (fast is None or rows is None or task.vocab_maps is not None or self.device.type != "cpu"
                or task.out_dtype not in (torch.bfloat16, torch.float32)):
            return None
        K = _fused()
        if K is None or not self._all_bf16(task.sources):
            return None
        fill = fast(K, {**task.global_params, **task.model_params})
        if fill is None:
            return None
        shape = (rows[1] - rows[0], *task.shape[1:])
        raws = self._read_bf16_bits(task, task.sources, rows)
        ob, dst = self._out_buffer(task, offset, math.prod(shape))
        if not fill(raws, dst):
            return None
        return ob.view(shape)

    def _all_bf16(self, sources: list[Source]) -> bool:
        """Every source is a plain bf16 safetensors tensor that can be read straight into a buffer."""
        return all(self.plan.models[s.model].can_read_into(s.name)
                   and self.plan.models[s.model].entry(s.name).dtype == torch.bfloat16 for s in sources)

    def _read_bf16_bits(self, task: TensorTask, sources: list[Source], rows: tuple[int, int]) -> list[np.ndarray]:
        """Row range of each bf16 source as uint16 bits, read into this thread's raw buffers (slot = position)."""
        self._check()  # every pass of every unit reads chunk by chunk: the place a cancel takes effect
        shape = (rows[1] - rows[0], *task.shape[1:])
        out = []
        for i, s in enumerate(sources):
            raw = self._buffer(("raw", i), shape, torch.bfloat16)
            self.plan.models[s.model].read_into(s.name, raw, rows)
            out.append(raw.view(torch.int16).reshape(-1).numpy().view("uint16"))
        return out

    def _out_buffer(self, task: TensorTask, offset: int, n: int) -> tuple[torch.Tensor, np.ndarray]:
        """A flat output buffer of ``n`` elements (the writer's staging buffer when offered) and the array a
        kernel fills: uint16 bits for bf16 output, else float32."""
        st = self._staging(task, offset, n * task.out_dtype.itemsize) if self._staging is not None else None
        ob = st.view(task.out_dtype) if st is not None else self._buffer(("out",), (n,), task.out_dtype)
        return ob, ob.view(torch.int16).numpy().view("uint16") if task.out_dtype == torch.bfloat16 else ob.numpy()

    def _cast(self, task: TensorTask, out: torch.Tensor, offset: int) -> torch.Tensor:
        """``out`` in the output dtype on the CPU, in a staging buffer when the sink offers one."""
        st = None
        if self._staging is not None:
            st = self._staging(task, offset, out.numel() * task.out_dtype.itemsize)
        if st is None:
            return out.to(task.out_dtype)
        ob = st.view(task.out_dtype).view(out.shape)
        ob.copy_(out)
        return ob

    def _load(self, task: TensorTask, src: Source, rows: tuple[int, int] | None, slot: int, check: bool = True,
              into: torch.Tensor | None = None) -> torch.Tensor:
        """Read one input (or row range) as float32 on the device, rejecting NaN/Inf with a clear error.

        Row chunks are read and converted through per-thread buffers (``slot`` = input position; or into
        ``into``), so the hot loop never touches freshly allocated pages; methods never modify their inputs,
        so reuse is safe. (Converting straight from an mmap of the file was tried: page faults plus
        MADV_DONTNEED to keep RSS bounded cost as much system time as the pread copy.)
        """
        self._check()  # a cancelled run stops at the next chunk it reads
        ck = self.plan.models[src.model]
        finite = None
        if rows is not None and ck.can_read_into(src.name):
            e = ck.entry(src.name)
            shape = (rows[1] - rows[0], *e.shape[1:])
            raw = self._buffer(("raw", slot), shape, e.dtype)
            ck.read_into(src.name, raw, rows)
            if self.device.type == "cpu":
                x = into if into is not None else self._buffer(("f32", slot), shape, torch.float32)
                K = _fused() if e.dtype == torch.bfloat16 else None
                if K is not None:
                    finite = K.bf16_to_f32(raw.view(torch.int16).reshape(-1).numpy().view("uint16"),
                                           x.view(torch.int32).reshape(-1).numpy().view("uint32"))
                else:
                    x.copy_(raw)
            else:
                x = raw.to(device=self.device, dtype=torch.float32)
        else:
            x = ck.read(src.name, rows).to(device=self.device, dtype=torch.float32)
            if into is not None:
                into.copy_(x)
                x = into
        # one fused reduction instead of an isfinite mask: NaN/Inf anywhere make the sum non-finite
        if check and (finite is False or (finite is None and not bool(torch.isfinite(x.sum())))) and not bool(torch.isfinite(x).all()):
            bad = int((~torch.isfinite(x)).sum())
            raise InputError(
                f"Tensor {src.name!r} of model {src.model} contains {bad} NaN/Inf value(s)"
                + (f" (rows {rows[0]}..{rows[1]})" if rows else "")
                + ". The checkpoint is corrupt or was saved after a diverged training run; nothing was written."
            )
        return x

    def _buffer(self, key: tuple, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        pool: dict = self._tls.__dict__.setdefault("pool", {})
        n = math.prod(shape)
        buf = pool.get((key, dtype))
        if buf is None or buf.numel() < n:
            buf = pool[(key, dtype)] = torch.empty(max(n, self.chunk_elems), dtype=dtype)
        return buf[:n].view(shape)

    def compute(self, task: TensorTask, rows: tuple[int, int] | None = None) -> torch.Tensor:
        """The float32 result of one task (or of a row range of it); a whole tensor of a method with a
        streamer goes through the streamer as one chunk, so this is what the merge writes."""
        if task.method is None:
            return self.plan.models[task.sources[0].model].read(task.sources[0].name, rows)
        tensors = [self._load(task, s, rows, i) for i, s in enumerate(task.sources)]
        base = self._load(task, task.base, rows, len(tensors)) if task.base is not None else None
        if task.vocab_maps is not None:
            tensors, base = align_vocab(task, tensors, base)
        kwargs = dict(task.global_params)
        kwargs.update(task.model_params)
        if task.method.random:
            kwargs["seed"] = task.seed
        st = _streamer(task) if rows is None else None
        try:
            if st is not None:  # the streamer over one in-memory chunk: what a chunked tensor gets
                out = _run_streamer_whole(st.run, task, tensors, base, self.device.type, kwargs)
            else:
                out = task.method.fn(tensors, base=base, **kwargs)
        except OutputError:
            raise  # output errors (a background write failing) are not this tensor's
        except ModelmixError as e:
            raise type(e)(f"Tensor {task.name!r}: {e}") from None
        if out.shape != tuple(tensors[0].shape if tensors else base.shape):  # type: ignore[union-attr]
            raise RuntimeError(f"method {task.method.name} returned shape {tuple(out.shape)} for {task.name}")
        return out


class _WholeSource:
    """A whole tensor as the single row chunk of a streamer's source (see ``_run_streamer_whole``)."""

    def __init__(self, task: TensorTask, tensors: list[torch.Tensor], base: torch.Tensor | None, device: str):
        self.shape, self.numel, self.device = task.shape, math.prod(task.shape), device
        self.rows = (0, task.shape[0])
        self.tensors, self.base = tensors, base
        self.out: list[torch.Tensor] = []

    def chunks(self):
        yield self.rows, self.tensors, self.base

    def emit(self, rows, out):
        assert rows == self.rows, "a one-chunk source emits the whole tensor once"
        self.out.append(out)


def _run_streamer_whole(fn, task: TensorTask, tensors: list[torch.Tensor], base: torch.Tensor | None, device: str,
                        kwargs: dict) -> torch.Tensor:
    """A streamer (``Method.streamer``) over a whole tensor as a single chunk of rows: the result of a
    small tensor is computed by the same implementation as a streamed one, so the chunk size never decides
    which implementation (and which summation order) computes a tensor."""
    src = _WholeSource(task, tensors, base, device)
    fn(src, **kwargs)
    (out,) = src.out
    return out


def align_vocab(task: TensorTask, tensors: list[torch.Tensor], base: torch.Tensor | None):
    """Permute embedding rows onto the output vocabulary, filling missing tokens as mergekit does.

    A token missing from a model takes: the row of the only model that has it; else the base model's row;
    else the mean of the rows of the models that have it; zero if no model has it.
    """
    maps = task.vocab_maps
    assert maps is not None
    keys = [s.model for s in task.sources] + ([task.base.model] if task.base is not None else [])
    mats = tensors + ([base] if base is not None else [])
    perms = [maps[k] for k in keys]
    size = perms[0].shape[0]
    present = torch.stack([p >= 0 for p in perms])  # models x vocab
    count = present.sum(0)
    rows_shape = mats[0].shape[1:]
    aligned = []
    for m, p in zip(mats, perms, strict=True):
        out = torch.zeros((size, *rows_shape), dtype=m.dtype, device=m.device)
        ok = p >= 0
        out[ok] = m[p[ok].to(m.device)]
        aligned.append(out)
    missing_somewhere = (count < len(mats)).nonzero().flatten().tolist()
    base_key = maps.get("__base__")
    base_idx = keys.index(base_key) if base_key in keys else None
    for tok in missing_somewhere:
        have = present[:, tok].nonzero().flatten().tolist()
        if not have:
            fill = torch.zeros(rows_shape, dtype=mats[0].dtype, device=mats[0].device)
        elif len(have) == 1:
            fill = aligned[have[0]][tok]
        elif base_idx is not None and base_idx in have:
            fill = aligned[base_idx][tok]
        else:
            fill = torch.stack([aligned[i][tok] for i in have]).mean(0)
        for i in range(len(mats)):
            if not present[i, tok]:
                aligned[i][tok] = fill
    if base is not None:
        return aligned[:-1], aligned[-1]
    return aligned, None
