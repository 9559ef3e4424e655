"""The serving engine: one thread that does all of a server's torch work, in batches.

Why one thread. A server answers many requests at once, but on a CPU their forward passes compete for the
same cores and, worse, for Python's GIL: a request thread classifying a query while four others each run a
decoding loop waits its turn at every GIL hand-off, and the router's 5 ms of work took 45 ms under load.
Here every forward pass (the encoder's and every model's) runs in this thread, so

* **generation is batched** (continuous batching): each local model has one running batch; a request that
  arrives while it decodes is prefilled and joins it at the next step (its KV cache left-padded to the
  batch's length), and a finished row leaves at once. One forward per step serves every request on that
  model, so throughput grows with load instead of the queue;
* **classification comes first** (with a torch encoder): queries waiting to be classified are embedded in
  one batch before every generation step, so a query waits for at most one forward pass, never for whole
  answers. An ONNX Runtime encoder (the default, ``encoder_runtime``) gives the GIL back once per forward,
  so the server classifies in the request thread instead, in parallel with generation;
* request threads only tokenize, wait on a :class:`Stream` and write HTTP.

Rows decode greedily, exactly as :func:`modelmix.router.backends.mixed_generate` does for one model; a batch
computes the same tokens as one request alone up to the float rounding of batched matmuls (tested).
A model whose KV cache is not a plain ``DynamicCache`` (sliding windows, recurrent state) cannot be joined
mid-decode: its new requests wait for the running batch to finish and start the next one together.
Token-level mixing of several models (``mix``) runs as its own job, one token per engine round.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import torch

_END = object()


class Stream:
    """The text pieces of one generation, as the engine decodes them. Iterating blocks until the next piece;
    a failure in the engine is raised here (as :class:`~modelmix.router.backends.BackendError`). Closing
    the iterator early (a client that went away) cancels the row at the engine's next step."""

    def __init__(self) -> None:
        self._q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.cancelled = False

    def put(self, piece: str) -> None:
        if piece:
            self._q.put(piece)

    def drain(self) -> list[str]:
        """The pieces waiting now, without blocking (for a producer and consumer in one thread)."""
        out = []
        while True:
            try:
                item = self._q.get_nowait()
            except queue.Empty:
                return out
            if isinstance(item, str):
                out.append(item)

    def end(self, error: BaseException | None = None) -> None:
        self._q.put(error if error is not None else _END)

    def __iter__(self) -> Iterator[str]:
        try:
            while True:
                item = self._q.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.cancelled = True  # consumed, failed or abandoned: nothing more is wanted


class TextOut:
    """Turns a row's generated token ids into text pieces: what a stream shows, and when the row is done
    (eos, the token budget, or the end of the first non-empty line for one-line models)."""

    def __init__(self, tok: Any, budget: int, one_line: bool, out: Stream) -> None:
        self.tok, self.budget, self.one_line, self.out = tok, budget, one_line, out
        self.ids: list[int] = []
        self.shown = ""

    def push(self, token: int) -> bool:
        """Take the next token; True when the row is finished."""
        if token == self.tok.eos_token_id:
            return self._finish()
        self.ids.append(token)
        full = self.tok.decode(self.ids, skip_special_tokens=True)
        if self.one_line:
            full = full.lstrip()
            if "\n" in full:
                head = full.split("\n", 1)[0]
                if len(head) > len(self.shown):
                    self.out.put(head[len(self.shown):])
                return True
        if len(full) > len(self.shown) and full.startswith(self.shown):
            self.out.put(full[len(self.shown):])
            self.shown = full
        return self._finish() if len(self.ids) >= self.budget else False

    def _finish(self) -> bool:
        if not self.one_line and self.ids:  # text that decoded differently mid-way (multi-byte characters)
            full = self.tok.decode(self.ids, skip_special_tokens=True)
            if full.startswith(self.shown) and len(full) > len(self.shown):
                self.out.put(full[len(self.shown):])
        return True


@dataclass
class _Request:
    backend: Any
    prompt: list[int]
    text: TextOut


@dataclass
class _Batch:
    """One model's running batch, between steps: the cache holds every token fed so far, ``logits`` predict
    each row's next token. ``attn`` [B, T] marks real (1) and left-padding (0) positions, ``pos`` [B] is the
    position of each row's next token."""

    em: Any
    rows: list[TextOut]
    cache: Any
    attn: torch.Tensor
    pos: torch.Tensor
    logits: torch.Tensor
    joinable: bool = True
    backend: Any = None
    cache_kw: str = "cache"  # the forward() argument that takes the KV cache (looked up once, at prefill)


def _joinable(cache: Any) -> bool:
    from transformers.cache_utils import DynamicCache, DynamicLayer

    return type(cache) is DynamicCache and all(type(layer) is DynamicLayer for layer in cache.layers)


def _kv(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(layer.keys, layer.values) for layer in cache.layers]


def _left_pad(t: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    extra = width - t.shape[dim]
    if extra == 0:
        return t
    shape = list(t.shape)
    shape[dim] = extra
    return torch.cat([t.new_zeros(shape), t], dim=dim)


def _merge(a: _Batch, b: _Batch) -> _Batch:
    """Batch ``b`` (just prefilled) joined to ``a``: both left-padded to the longer cache, stacked."""
    from transformers.cache_utils import DynamicCache

    width = max(a.attn.shape[1], b.attn.shape[1])
    kv = [(torch.cat([_left_pad(ka, width, 2), _left_pad(kb, width, 2)]),
           torch.cat([_left_pad(va, width, 2), _left_pad(vb, width, 2)]))
          for (ka, va), (kb, vb) in zip(_kv(a.cache), _kv(b.cache), strict=True)]
    return _Batch(a.em, a.rows + b.rows, DynamicCache(ddp_cache_data=kv),
                  torch.cat([_left_pad(a.attn, width, 1), _left_pad(b.attn, width, 1)]),
                  torch.cat([a.pos, b.pos]), torch.cat([a.logits, b.logits]), backend=a.backend,
                  cache_kw=a.cache_kw)


class Engine:
    """See the module docstring. ``max_batch`` caps the rows of one model's batch (more wait for a place);
    ``threads`` is the torch threads of the engine thread (None: torch's default)."""

    def __init__(self, max_batch: int = 16, threads: int | None = None) -> None:
        self.max_batch, self.threads = max_batch, threads
        self._inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._batches: dict[int, _Batch] = {}  # id(backend) -> running batch
        self._pending: dict[int, list[_Request]] = {}  # id(backend) -> requests not yet prefilled
        self._mixed: list[tuple[Iterator[None], Stream]] = []
        self._classify: list[tuple[Any, str, Future[Any], float]] = []
        self._calls: list[tuple[Any, tuple[Any, ...], Future[Any]]] = []
        self._stopping = False
        self.steps = 0  # decoding forward passes run (each serves a whole batch)
        self.rows_stepped = 0  # rows those passes served (rows_stepped / steps = mean batch size)
        self.classify_batches = 0
        self.classified = 0
        self.prefills = 0
        #: seconds the engine thread spent per kind of work (the rest of its time it waited for work)
        self.busy = {"classify": 0.0, "prefill": 0.0, "decode": 0.0, "mixed": 0.0}
        self.classify_wait = 0.0  # summed seconds queries waited before their classification batch began
        self._thread = threading.Thread(target=self._loop, name="modelmix-engine", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 10.0) -> None:
        """Stop the engine thread (a server shutting down): every request still waiting or decoding gets a
        BackendError, and the thread is joined. Idempotent."""
        if self._thread.is_alive():
            self._inbox.put(("stop", None))
            self._thread.join(timeout)

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ what request threads call
    def classify(self, classifier: Any, query: str) -> Any:
        """The classifier's :class:`Classification` of ``query``, computed in the engine's next batch;
        ``seconds`` is the whole wait (queue + batch), the overhead a request really sees."""
        fut: Future[Any] = Future()
        self._inbox.put(("classify", (classifier, query, fut, time.perf_counter())))
        return fut.result()

    def generate(self, backend: Any, prompt: list[int], max_new_tokens: int, one_line: bool) -> Stream:
        """Greedy decoding of ``prompt`` by ``backend`` (a LocalBackend), batched with its other requests."""
        out = Stream()
        self._inbox.put(("generate", _Request(backend, prompt, TextOut(backend.em.tokenizer, max_new_tokens,
                                                                      one_line, out))))
        return out

    def call(self, fn: Any, *args: Any) -> Any:
        """``fn(*args)`` run in the engine thread between steps (any other torch work, e.g. a judge's
        scoring), its result or its exception returned here."""
        fut: Future[Any] = Future()
        self._inbox.put(("call", (fn, args, fut)))
        return fut.result()

    def mixed(self, backends: Sequence[Any], weights: Sequence[float], prompt: list[int], max_new_tokens: int,
              one_line: bool) -> Stream:
        """Token-level mixing of several local models (``backends.mixed_steps``), one token per engine round."""
        from modelmix.router.backends import mixed_steps

        out = Stream()
        steps = mixed_steps(backends, weights, prompt, TextOut(backends[0].em.tokenizer, max_new_tokens, one_line,
                                                                out))
        self._inbox.put(("mixed", (steps, out)))
        return out

    def stats(self) -> dict[str, float]:
        """Counters for ``/metrics`` and benchmarks: work done and the engine thread's busy seconds."""
        return {"steps": self.steps, "rows_stepped": self.rows_stepped, "prefills": self.prefills,
                "classify_batches": self.classify_batches, "classified": self.classified,
                "classify_wait_s": self.classify_wait, **{f"busy_{k}_s": v for k, v in self.busy.items()}}

    # ------------------------------------------------------------------ the loop
    def _take(self, block: bool) -> None:
        try:
            item = self._inbox.get(block=block)
        except queue.Empty:
            return
        while True:
            kind, job = item
            if kind == "classify":
                self._classify.append(job)
            elif kind == "generate":
                self._pending.setdefault(id(job.backend), []).append(job)
            elif kind == "call":
                self._calls.append(job)
            elif kind == "stop":
                self._stopping = True
            else:
                self._mixed.append(job)
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return

    def _busy(self) -> bool:
        return bool(self._batches or self._mixed or any(self._pending.values()) or self._classify or self._calls)

    def _loop(self) -> None:
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        with torch.inference_mode():
            while True:
                if not self._stopping:  # (a stop taken mid-round must not wait here for more work)
                    self._take(block=not self._busy())
                if self._stopping:
                    self._drain(None)
                    return
                try:
                    self._round()
                except Exception as e:  # noqa: BLE001 - a bug must fail the requests in flight, not hang them
                    self._drain(e)

    def _round(self) -> None:
        """One round: classification first, then admission, one step of every batch, mixing, other calls."""
        self._run_classify()
        for key in list(self._pending):
            self._admit(key)
            self._run_classify()
        for key in list(self._batches):
            self._step(key)
            self._take(block=False)
            self._run_classify()
        for job in list(self._mixed):
            self._step_mixed(job)
        while self._calls:
            fn, args, fut = self._calls.pop(0)
            try:
                fut.set_result(fn(*args))
            except Exception as e:  # noqa: BLE001 - the caller gets it
                fut.set_exception(e)

    def _drain(self, cause: Exception | None) -> None:
        """Fail everything in flight: the server is stopping (``cause`` None) or the engine hit a bug."""
        from modelmix.router.backends import BackendError

        err = BackendError("the server is shutting down" if cause is None else
                           f"the serving engine failed: {type(cause).__name__}: {cause}")
        for b in self._batches.values():
            for row in b.rows:
                row.out.end(err)
        for reqs in self._pending.values():
            for r in reqs:
                r.text.out.end(err)
        for _, out in self._mixed:
            out.end(err)
        for _, _, fut, _ in self._classify:
            fut.set_exception(err)
        for _, _, fut in self._calls:
            fut.set_exception(err)
        self._batches, self._pending, self._mixed, self._classify, self._calls = {}, {}, [], [], []

    def _run_classify(self) -> None:
        while self._classify:
            jobs, self._classify = self._classify, []
            groups: dict[int, list[tuple[Any, str, Future[Any], float]]] = {}
            for j in jobs:
                groups.setdefault(id(j[0]), []).append(j)
            for group in groups.values():
                clf = group[0][0]
                t1 = time.perf_counter()
                self.classify_wait += sum(t1 - t0 for _, _, _, t0 in group)
                try:
                    with clf.encoder.threads():
                        cs = clf.classify_many([q for _, q, _, _ in group])
                except Exception as e:  # noqa: BLE001 - reported to each waiting request
                    for _, _, fut, _ in group:
                        fut.set_exception(e)
                    continue
                now = time.perf_counter()
                self.busy["classify"] += now - t1
                self.classify_batches += 1
                self.classified += len(group)
                for (_, _, fut, t0), c in zip(group, cs, strict=True):
                    c.seconds = now - t0
                    fut.set_result(c)
            self._take(block=False)

    def _admit(self, key: int) -> None:
        """Prefill the waiting requests of one model (as many as fit) and join them to its batch."""
        reqs = [r for r in self._pending.pop(key, []) if not r.text.out.cancelled]
        running = self._batches.get(key)
        room = self.max_batch - (len(running.rows) if running else 0)
        n = room if running is None or running.joinable else 0
        take, rest = reqs[:max(0, n)], reqs[max(0, n):]
        if rest:
            self._pending[key] = rest
        if not take:
            return
        em = take[0].backend.em
        t1 = time.perf_counter()
        try:
            with em.threads():
                new = self._prefill(em, take)
            self.prefills += 1
            self.busy["prefill"] += time.perf_counter() - t1
            new.backend = take[0].backend
        except Exception as e:  # noqa: BLE001 - a model that fails fails its requests, not the server
            self._fail([r.text for r in take], take[0].backend, e)
            return
        self._batches[key] = new if running is None else _merge(running, new)

    def _prefill(self, em: Any, reqs: Sequence[_Request]) -> _Batch:
        from modelmix.eval.metrics import _cache_kwarg, _cache_of

        width = max(len(r.prompt) for r in reqs)
        pad = em.tokenizer.pad_token_id if em.tokenizer.pad_token_id is not None else 0
        ids = torch.full((len(reqs), width), pad, dtype=torch.long)
        attn = torch.zeros((len(reqs), width), dtype=torch.long)
        for i, r in enumerate(reqs):
            ids[i, width - len(r.prompt):] = torch.tensor(r.prompt, dtype=torch.long)
            attn[i, width - len(r.prompt):] = 1
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        dev = em.device
        out = em.model(input_ids=ids.to(dev), attention_mask=attn.to(dev), position_ids=pos.to(dev),
                       use_cache=True, logits_to_keep=1)
        cache = _cache_of(out)
        return _Batch(em, [r.text for r in reqs], cache, attn.to(dev), attn.sum(-1).to(dev),
                      out.logits[:, -1].float(), joinable=_joinable(cache), cache_kw=_cache_kwarg(em.model))

    def _step(self, key: int) -> None:
        """Choose every row's next token, stream it, drop finished rows, and run one forward for the rest."""
        b = self._batches[key]
        t1 = time.perf_counter()
        try:
            self._decode(key, b)
        finally:
            self.busy["decode"] += time.perf_counter() - t1

    def _decode(self, key: int, b: _Batch) -> None:
        from modelmix.eval.metrics import _cache_of

        nxt = b.logits.argmax(-1)
        keep = [i for i, (row, t) in enumerate(zip(b.rows, nxt.tolist(), strict=True))
                if not row.out.cancelled and not row.push(t)]
        kept = set(keep)
        for i, row in enumerate(b.rows):
            if i not in kept:
                row.out.end()
        if not keep:
            del self._batches[key]
            return
        if len(keep) < len(b.rows):
            idx = torch.tensor(keep, device=b.attn.device)
            b.cache.batch_select_indices(idx)
            b.rows, b.attn, b.pos, nxt = [b.rows[i] for i in keep], b.attn[idx], b.pos[idx], nxt[idx]
            lead = int((b.attn.sum(0) == 0).long().cumprod(0).sum())  # padding columns no row needs any more
            if lead:
                from transformers.cache_utils import DynamicCache

                if b.joinable:
                    b.cache = DynamicCache(ddp_cache_data=[(k[:, :, lead:], v[:, :, lead:]) for k, v in _kv(b.cache)])
                    b.attn = b.attn[:, lead:]
        b.attn = torch.cat([b.attn, b.attn.new_ones((len(keep), 1))], dim=1)
        try:
            with b.em.threads():
                out = b.em.model(input_ids=nxt[:, None], attention_mask=b.attn, position_ids=b.pos[:, None],
                                 use_cache=True, **{b.cache_kw: b.cache})
        except Exception as e:  # noqa: BLE001
            del self._batches[key]
            self._fail(b.rows, b.backend, e)
            return
        b.cache, b.pos, b.logits = _cache_of(out), b.pos + 1, out.logits[:, -1].float()
        self.steps += 1
        self.rows_stepped += len(keep)

    def _step_mixed(self, job: tuple[Iterator[None], Stream]) -> None:
        t1 = time.perf_counter()
        try:
            self._mixed_token(job)
        finally:
            self.busy["mixed"] += time.perf_counter() - t1

    def _mixed_token(self, job: tuple[Iterator[None], Stream]) -> None:
        steps, out = job
        try:
            if out.cancelled:
                raise StopIteration
            next(steps)
        except StopIteration:
            self._mixed.remove(job)
            out.end()
        except Exception as e:  # noqa: BLE001
            self._mixed.remove(job)
            self._fail([], None, e, [out])

    @staticmethod
    def _fail(rows: Sequence[TextOut], backend: Any, e: Exception, streams: Sequence[Stream] = ()) -> None:
        from modelmix.router.backends import BackendError

        name = getattr(backend, "name", "a local model")
        err = BackendError(f"{name} failed while generating: {type(e).__name__}: {e}")
        for row in rows:
            row.out.end(err)
        for s in streams:
            s.end(err)
