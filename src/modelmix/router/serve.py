"""``modelmix serve``: the router behind one OpenAI-compatible HTTP endpoint (FastAPI + uvicorn).

Endpoints:

* ``POST /v1/chat/completions`` — ``model`` is ``router`` (the config's strategy), ``router-<strategy>``
  (single, hybrid, mix, rank, auto), or one of the config's models (no routing). ``stream: true`` answers
  with server-sent events as the OpenAI API does (``chat.completion.chunk`` objects, then ``[DONE]``).
  Every completion carries a ``modelmix`` object: the route distribution, strategy, models, weights, the
  reason, and per-model latency; its ``id`` is the key for feedback.
* ``POST /v1/feedback`` ``{"id": ..., "score": 0..1}`` (or ``"thumbs": "up"|"down"``, optional ``"comment"``):
  stored durably (``router.store``) before the answer, then taught to the learner.
* ``GET /v1/models``, ``GET /healthz``, ``GET /metrics`` (Prometheus text).
* ``POST /admin/reload`` (or SIGHUP to a single-process server): re-read the config and the model
  directories without dropping requests; a bad config is refused (400) and the old one keeps serving.

Bad requests get a 4xx with an OpenAI-style JSON error body (``{"error": {"message", "type", "code"}}``),
never a 500: malformed JSON or fields 400, an unknown model 404, an unknown feedback id 404, a body over
``serve.max_request_bytes`` 413, more than ``serve.max_concurrent`` generations at once 429 (backpressure:
nothing waits in an unbounded queue). A model that fails is skipped for the route's next healthy model; if
none can answer, 503.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Generator, Iterator, Sequence
from typing import Any

from fastapi import Request  # at module level: the endpoints' annotations are resolved from these globals

from modelmix.router.backends import BackendError, LocalBackend, build_backends
from modelmix.router.config import STRATEGIES
from modelmix.router.decide import Decision, NoHealthyModel

VIRTUAL = ["router", *[f"router-{s}" for s in STRATEGIES]]


class ApiError(Exception):
    def __init__(self, status: int, message: str, code: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


def agreement_rank(answers: Sequence[str], weights: Sequence[float] | None = None) -> list[float]:
    """Default ranker: each answer's mean token-overlap F1 with the other answers (the consensus), times its
    weight when given. Works for any mix of local and remote models."""
    toks = [a.lower().split() for a in answers]

    def f1(a: list[str], b: list[str]) -> float:
        if not a or not b:
            return 0.0
        common = sum(min(a.count(t), b.count(t)) for t in set(a))
        return 0.0 if common == 0 else 2 * common / (len(a) + len(b))

    n = len(answers)
    scores = [sum(f1(toks[i], toks[j]) for j in range(n) if j != i) / max(1, n - 1) for i in range(n)]
    if weights is not None:
        scores = [s * w for s, w in zip(scores, weights, strict=True)]
    return scores


class Service:
    """The router, its backends, store and learner, and the strategies' execution (used by the app)."""

    def __init__(self, router: Any, store: Any, backends: dict[str, Any] | None = None, learner: Any = None,
                 engine: Any = None) -> None:
        from modelmix.router.engine import Engine

        self.router, self.store = router, store
        self.cfg = router.cfg
        # every forward pass (classification, generation) runs batched in the engine's one thread
        self.engine = engine if engine is not None else Engine(self.cfg.serve.max_batch,
                                                               self.cfg.serve.threads)
        self.backends = backends if backends is not None else build_backends(self.cfg, self.engine)
        for b in self.backends.values():
            if isinstance(b, LocalBackend) and b.engine is None:
                b.engine = self.engine
        self.learner = learner
        if learner is not None:
            router.learner = learner
        self._seen = 0  # the last feedback id taught to the learner
        self._synced = 0.0
        self.config_path: str | None = None  # set by build_service: what /admin/reload re-reads
        self.slots = threading.BoundedSemaphore(self.cfg.serve.max_concurrent)
        self.learn_lock = threading.Lock()
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry()
        self.m_requests = Counter("modelmix_requests", "Chat completions by strategy and outcome",
                                  ["strategy", "outcome"], registry=self.registry)
        self.m_feedback = Counter("modelmix_feedback", "Feedback events stored", registry=self.registry)
        self.m_latency = Histogram("modelmix_request_seconds", "Completion latency", ["strategy"],
                                   registry=self.registry)
        self.m_overhead = Histogram("modelmix_route_seconds", "Classification + decision latency",
                                    registry=self.registry, buckets=(.001, .0025, .005, .01, .02, .05, .1, .5))
        engine = self.engine

        class _EngineCollector:  # the engine's counters, read when /metrics is scraped
            def collect(self) -> Iterator[Any]:
                from prometheus_client.core import CounterMetricFamily

                for k, v in engine.stats().items():
                    yield CounterMetricFamily(f"modelmix_engine_{k.removesuffix('_s')}" + ("_seconds" if
                                              k.endswith("_s") else ""), f"serving engine: {k}", value=v)

        self.registry.register(_EngineCollector())

    def close(self) -> None:
        """Stop the engine thread (the store is the caller's: it may outlive the service)."""
        self.engine.close()

    # ------------------------------------------------------------------ reload
    def reload(self, config: str | None = None) -> dict[str, Any]:
        """Re-read the config (and every model directory, lazily) without dropping requests: the new router,
        backends and learner are built first, then swapped in at once; requests already running finish
        with the objects they hold. An invalid config raises ConfigError and changes nothing."""
        from modelmix.router import Router
        from modelmix.router.config import load_router_config
        from modelmix.router.learner import Learner

        path = config or self.config_path
        if path is None:
            raise ApiError(400, "this server was not started from a config file; nothing to reload.")
        cfg = load_router_config(path)
        same_encoder = (cfg.encoder_path(), cfg.encoder_dtype) == (self.cfg.encoder_path(), self.cfg.encoder_dtype)
        router = Router(cfg, encoder=self.router.encoder if same_encoder else None)
        backends = build_backends(cfg, self.engine)
        learner = Learner.for_config(cfg) if self.learner is not None else None
        with self.learn_lock:
            if learner is not None:
                for fid, dist, models, score, strategy in self.store.events_since(0):
                    learner.update(dist, models, score, strategy)
                    self._seen = fid
                router.learner = learner
            self.router, self.cfg, self.backends, self.learner = router, cfg, backends, learner
        return {"ok": True, "models": list(backends), "routes": [r.name for r in cfg.routes]}

    # ------------------------------------------------------------------ decisions
    def healthy(self) -> set[str]:
        return {n for n, b in self.backends.items() if b.healthy()}

    def decide(self, model: str, query: str) -> Decision | None:
        """None for a direct model request; else the router's decision (strategy from the virtual name)."""
        if model in self.backends:
            return None
        if model not in VIRTUAL:
            raise ApiError(404, f"model {model!r} does not exist; available: {', '.join(VIRTUAL + list(self.backends))}",
                           "model_not_found")
        strategy = None if model == "router" else model.removeprefix("router-")
        self.sync_learner()
        t0 = time.perf_counter()
        router = self.router
        try:
            if router.encoder.runtime is not None:
                # an ONNX Runtime encoder holds the GIL only around its one call, so the query is classified
                # here, beside the engine's generation on the other core (32 clients on 2 cores: overhead p95
                # 16-18 ms and 61-68 answers/s, against 20-21 ms and 49-52/s through the engine's batches)
                c = router.classifier.classify(query)
            else:  # a torch encoder's ~700 calls per forward would fight the engine thread for the GIL
                c = self.engine.classify(router.classifier, query)  # batched with the other requests' queries
            d = router.decide(c, strategy=strategy, healthy=self.healthy())
        except NoHealthyModel as e:
            raise ApiError(503, str(e), "no_healthy_model") from None
        d.seconds = time.perf_counter() - t0  # the overhead a request sees: queue + classification + decision
        self.m_overhead.observe(d.seconds)
        return d

    # ------------------------------------------------------------------ execution
    def _one(self, names: Sequence[str], messages: list[dict[str, str]], max_tokens: int | None,
             timings: dict[str, float], live: bool) -> Generator[str, None, str]:
        """The answer of the first of ``names`` that answers (a down or failing model is skipped for the
        next); returns the model used. ``live``: pieces go out as they are decoded, so a model that fails
        after its first piece cannot be replaced (the text sent cannot be taken back) and the request fails;
        otherwise each model's answer is held until complete and yielded in one piece."""
        errors = []
        for n in names:
            b = self.backends[n]
            if not b.healthy():
                errors.append(f"{n}: down")
                continue
            t0 = time.perf_counter()
            held: list[str] = []
            sent = False
            try:
                for piece in b.stream(messages, max_tokens):
                    if live:
                        sent = True
                        yield piece
                    else:
                        held.append(piece)
            except BackendError as e:
                if sent:
                    raise ApiError(502, f"{n} failed after part of its answer was sent: {e}", "backend_failed") from None
                errors.append(str(e))
                continue
            timings[n] = round((time.perf_counter() - t0) * 1000, 2)
            if held:
                yield "".join(held)
            return n
        raise ApiError(503, "no model could answer: " + "; ".join(errors), "no_healthy_model")

    def _fallbacks(self, d: Decision, i: int) -> list[str]:
        """Decision model i, then the other models of its route (config order) as fallbacks."""
        route = next((r for r in self.cfg.routes if r.name == d.routes[i]), None)
        rest = [m for m in (route.models if route else []) if m != d.models[i]]
        return [d.models[i], *rest]

    def pieces(self, d: Decision | None, model: str, messages: list[dict[str, str]], max_tokens: int | None,
               meta: dict[str, Any], live: bool = True) -> Iterator[str]:
        """Execute a decision (or a direct model request, ``d`` None): the answer's text pieces as they are
        decided, with ``meta`` (the completion's ``modelmix`` object) filled in by the end. What streams:
        single and direct token by token; hybrid the refiner's tokens (the draft is an intermediate, never
        sent); token-level mix each mixed token; rank and response-level mix the chosen answer, in one piece
        once every candidate has been scored (the choice needs them all). A failure before the first piece
        raises :class:`ApiError` (the HTTP status is still free to set)."""
        timings: dict[str, float] = {}
        meta["worker_pid"] = os.getpid()
        meta["per_model_ms"] = timings
        if self.sensitive(d, model):
            yield from self._critiqued(d, model, messages, max_tokens, meta, timings, live)
            return
        yield from self._answer(d, model, messages, max_tokens, meta, timings, live)

    def sensitive(self, d: Decision | None, model: str) -> bool:
        """Whether the answer goes through the critique step: the decision uses a route marked sensitive,
        or (a direct request, no routing) the named model serves one, so naming it does not bypass the step."""
        if d is not None:  # the routes whose models answer (a single decision lists the others as ranked)
            used = d.routes[:len(d.models)]
            return any(r.sensitive for r in self.cfg.routes if r.name in used)
        return any(r.sensitive and model in r.models for r in self.cfg.routes)

    def _critiqued(self, d: Decision | None, model: str, messages: list[dict[str, str]], max_tokens: int | None,
                   meta: dict[str, Any], timings: dict[str, float], live: bool) -> Iterator[str]:
        """A sensitive answer through self-critique (RR, arXiv 2406.07188): the strategy's answer is kept back
        as a draft, the critic (``critique.critic``; if it cannot answer, the answering model) critiques it,
        and the answering model rewrites it using the critique; only the rewrite is sent. The draft, the
        critique and every other intermediate (a hybrid's draft, ranked candidates, pipeline steps) go to
        ``meta["withheld"]``: logged in the store, never sent to the client (``public``)."""
        spec = self.cfg.critique
        draft: list[str] = []
        _drain(self._answer(d, model, messages, max_tokens, meta, timings, False), draft)
        author = meta.get("chosen") or meta["models"][-1]  # the model whose answer it is (a hybrid's refiner)
        own = self._author_first(d, author)
        convo = [*messages, {"role": "assistant", "content": "".join(draft)},
                 {"role": "user", "content": spec.critique_prompt}]
        critics = own if spec.critic is None else [spec.critic, *own]
        steps: dict[str, float] = {}
        crit: list[str] = []
        by = _drain(self._one(critics, convo, spec.max_new_tokens, steps, False), crit)
        convo += [{"role": "assistant", "content": "".join(crit)}, {"role": "user", "content": spec.rewrite_prompt}]
        withheld = {k: meta.pop(k) for k in ("draft", "candidates", "steps") if k in meta}
        meta["withheld"] = {**withheld, "answer": "".join(draft), "critique": "".join(crit), "conversation": convo}
        meta["critique"] = {"strategy": "rr-extcrit" if by == spec.critic else "rr", "critic": by,
                            "critique_ms": round(sum(steps.values()), 2)}
        t0 = time.perf_counter()
        meta["critique"]["rewriter"] = yield from self._one(own, convo, max_tokens, {}, live)
        meta["critique"]["rewrite_ms"] = round((time.perf_counter() - t0) * 1000, 2)

    def _author_first(self, d: Decision | None, author: str) -> list[str]:
        """The model that answered, then its route's other models as fallbacks."""
        if d is None:
            return [author]
        i = d.models.index(author) if author in d.models else 0
        rest = self._fallbacks(d, i)
        return [author, *[m for m in rest if m != author]]

    def _answer(self, d: Decision | None, model: str, messages: list[dict[str, str]], max_tokens: int | None,
                meta: dict[str, Any], timings: dict[str, float], live: bool) -> Iterator[str]:
        if d is None:
            meta["strategy"] = "direct"
            meta["models"] = [(yield from self._one([model], messages, max_tokens, timings, live))]
            return
        meta.update(distribution=d.classification.distribution, strategy=d.strategy, routes=d.routes,
                    weights=d.weights, why=d.why, route_ms=round(d.seconds * 1000, 3), models=list(d.models))
        if d.strategy == "single":
            meta["models"] = [(yield from self._one(self._fallbacks(d, 0), messages, max_tokens, timings, live))]
        elif d.strategy == "hybrid" and d.pipeline is not None:
            yield from self._pipeline(d, messages, max_tokens, timings, meta, live)
        elif d.strategy == "hybrid":
            draft: list[str] = []
            a = _drain(self._one(self._fallbacks(d, 0), messages, max_tokens, timings, False), draft)
            meta.update(draft="".join(draft), models=[a])
            refine = self.cfg.serve.hybrid_template.format(query=_last_user(messages), draft=meta["draft"])
            refined = _Result(self._one(self._fallbacks(d, 1), [*messages[:-1], {"role": "user", "content": refine}],
                                        max_tokens, timings, live))
            held, started = "", False  # leading whitespace is held back: a blank refinement leaves the draft
            for piece in refined:
                if started:
                    yield piece
                    continue
                held += piece
                if held.strip():
                    started = True
                    yield held
            meta["models"] = [a, refined.value]
            if not started:  # the refiner had nothing to add (e.g. a one-line model given a long prompt)
                meta["refined"] = False
                yield meta["draft"]
        elif d.strategy == "mix" and self._token_mixable(d.models):
            bs = [self.backends[m] for m in d.models]
            ids, one_line = bs[0].prompt_ids(messages)
            t0 = time.perf_counter()
            meta["mixing"] = "token"
            sent = False
            try:
                for piece in self.engine.mixed(bs, d.weights, ids, max_tokens or bs[0].max_new_tokens, one_line):
                    sent = True
                    yield piece
            except BackendError as e:
                raise ApiError(502 if sent else 503, f"token mixing failed: {e}", "backend_failed") from None
            timings["+".join(d.models)] = round((time.perf_counter() - t0) * 1000, 2)
        else:  # rank, or mix across different vocabularies / remote models: answers ranked (weighted for mix)
            answers, used = self._candidates(d, messages, max_tokens, timings)
            w = [d.weights[d.models.index(m)] if m in d.models else 0.0 for m in used]
            scores = self.rank(messages, answers, w if d.strategy == "mix" else None)
            best = max(range(len(answers)), key=scores.__getitem__)
            meta.update(models=used, ranker=self.cfg.serve.ranker, chosen=used[best],
                        candidates=[{"model": m, "answer": a, "score": s}
                                    for m, a, s in zip(used, answers, scores, strict=True)],
                        mixing="response" if d.strategy == "mix" else None)
            yield answers[best]

    def _pipeline(self, d: Decision, messages: list[dict[str, str]], max_tokens: int | None,
                  timings: dict[str, float], meta: dict[str, Any], live: bool) -> Iterator[str]:
        """A config pipeline: each step's route model answers the previous step's answer, put through the
        step's template; the last step streams (``live``), the others are intermediates (``meta["steps"]``)."""
        pl = self.cfg.pipeline(d.pipeline)  # type: ignore[arg-type]
        if pl is None:  # reloaded away between decision and execution
            raise ApiError(503, f"pipeline {d.pipeline} is no longer configured; retry.", "no_healthy_model")
        query = _last_user(messages)
        text, matched = pl.first_input(query)
        meta.update(pipeline=pl.name, steps=[], models=[])
        if not matched:
            meta["input_matched"] = False
        for i, st in enumerate(pl.steps):
            tpl = st.template or ("{text}" if i == 0 else self.cfg.serve.hybrid_template)
            prompt = tpl.format(query=query, text=text, draft=text)
            msgs = [*messages[:-1], {"role": "user", "content": prompt}]
            last = i == len(pl.steps) - 1
            out: list[str] = []
            r = _Result(self._one(self._fallbacks(d, i), msgs, max_tokens, timings, live and last))
            for piece in r:
                out.append(piece)
                if last:
                    yield piece
            text = "".join(out)
            meta["models"].append(r.value)
            meta["steps"].append({"route": st.route, "model": r.value, "prompt": prompt, "answer": text})

    def _candidates(self, d: Decision, messages: list[dict[str, str]], max_tokens: int | None,
                    timings: dict[str, float]) -> tuple[list[str], list[str]]:
        """Every decision model's answer (each with its route's fallbacks), generated at once: local models
        join the engine's batches side by side, remote ones are awaited in parallel. Distinct models only."""
        from concurrent.futures import ThreadPoolExecutor

        def one(i: int) -> tuple[str, str] | None:
            out: list[str] = []
            try:
                m = _drain(self._one(self._fallbacks(d, i), messages, max_tokens, timings, False), out)
            except ApiError:
                return None
            return m, "".join(out)

        with ThreadPoolExecutor(max_workers=len(d.models)) as pool:
            results = list(pool.map(one, range(len(d.models))))
        answers, used = [], []
        for r in results:
            if r is not None and r[0] not in used:
                used.append(r[0])
                answers.append(r[1])
        if not answers:
            raise ApiError(503, "no model could answer", "no_healthy_model")
        return answers, used

    def run(self, d: Decision | None, model: str, messages: list[dict[str, str]],
            max_tokens: int | None) -> tuple[str, dict[str, Any]]:
        """:meth:`pieces`, whole: the answer and the ``modelmix`` metadata (a failing model is replaced by its
        route's next one whenever it fails, nothing having been sent yet)."""
        meta: dict[str, Any] = {}
        text = "".join(self.pieces(d, model, messages, max_tokens, meta, live=False))
        return text, meta

    def rank(self, messages: list[dict[str, str]], answers: Sequence[str],
             weights: Sequence[float] | None) -> list[float]:
        """Scores of candidate answers, higher is better: the config's ranker (``serve.ranker``). The judge's
        mean log-likelihood is shifted by log(weight) for response-level mixing."""
        if self.cfg.serve.ranker != "judge":
            return agreement_rank(answers, weights)
        import math

        judge = self.backends[self.cfg.serve.judge]  # type: ignore[index]
        scores = self.engine.call(judge.loglik, messages, list(answers))
        if weights is not None:
            scores = [s + (math.log(w) if w > 0 else -math.inf) for s, w in zip(scores, weights, strict=True)]
        return scores

    def usage(self, meta: dict[str, Any], messages: list[dict[str, str]], text: str) -> dict[str, int]:
        """OpenAI's ``usage`` in tokens of the models that wrote it: for a critiqued answer the sum of its
        three calls (answer, critique, rewrite; each prompt is the conversation so far); otherwise the call
        that wrote the answer sent (the chosen one of a ranking, a hybrid's refiner: the other candidates'
        and the draft's calls are not counted). A remote model's count is not known here and counts 0."""
        w = meta.get("withheld")
        crit = meta.get("critique")
        if w and crit:
            convo = w["conversation"]
            n = len(messages)
            calls = [(meta["models"][-1] if meta.get("chosen") is None else meta["chosen"], messages, w["answer"]),
                     (crit["critic"], convo[:n + 2], w["critique"]), (crit["rewriter"], convo, text)]
        else:
            name = meta.get("chosen") or (meta.get("models") or [None])[-1]
            calls = [(name, messages, text)]
        p = c = 0
        for name, prompt, out in calls:
            b = self.backends.get(name) if name else None
            if isinstance(b, LocalBackend):
                p += len(b.prompt_ids(prompt)[0])
                c += len(b.em.tokenizer(out, add_special_tokens=False)["input_ids"]) if out else 0
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}

    def _token_mixable(self, names: Sequence[str]) -> bool:
        bs = [self.backends[n] for n in names]
        if len(bs) < 2 or not all(isinstance(b, LocalBackend) for b in bs):
            return False
        vocab = [b.em.tokenizer.get_vocab() for b in bs]
        return all(v == vocab[0] for v in vocab[1:]) and len({b.prompt_ids([{"role": "user", "content": "x"}])[1]
                                                              for b in bs}) == 1

    def feedback(self, body: dict[str, Any]) -> int:
        from modelmix.errors import DataError
        from modelmix.router.store import UnknownInteraction

        iid = body.get("id")
        if not isinstance(iid, str):
            raise ApiError(400, 'feedback needs "id": the id of a completion.')
        try:
            event = self.store.add_feedback(iid, body.get("score"), thumbs=body.get("thumbs"),
                                            comment=body.get("comment"))
        except UnknownInteraction as e:
            raise ApiError(404, str(e), "not_found") from None
        except DataError as e:
            raise ApiError(400, str(e)) from None
        self.m_feedback.inc()
        self.sync_learner(force=True)
        return event

    def sync_learner(self, force: bool = False) -> None:
        """Teach the learner every feedback event stored since it last looked, in id order, whichever worker
        stored it (several uvicorn workers share one store; each keeps its own learner in step with it).
        Without ``force`` at most every ``serve.learner_sync_s`` seconds."""
        if self.learner is None or (not force and time.monotonic() - self._synced < self.cfg.serve.learner_sync_s):
            return
        with self.learn_lock:
            for fid, dist, models, score, strategy in self.store.events_since(self._seen):
                self.learner.update(dist, models, score, strategy)
                self._seen = fid
            self._synced = time.monotonic()


class _Result:
    """Iterate a generator and keep what it returns (``value``, once exhausted)."""

    def __init__(self, gen: Generator[str, None, Any]) -> None:
        self.gen, self.value = gen, None

    def __iter__(self) -> Iterator[str]:
        self.value = yield from self.gen


def _drain(gen: Generator[str, None, Any], out: list[str]) -> Any:
    """Run a generator to its end, its pieces appended to ``out``; what it returns."""
    r = _Result(gen)
    out.extend(r)
    return r.value


def public(meta: dict[str, Any]) -> dict[str, Any]:
    """The ``modelmix`` object a client gets: everything but what a critique step withheld (the draft and
    the critique of a sensitive answer: sending them would hand back what the step took out)."""
    return {k: v for k, v in meta.items() if k != "withheld"}


def _last_user(messages: Sequence[dict[str, str]]) -> str:
    users = [m["content"] for m in messages if m.get("role") == "user"]
    return users[-1] if users else messages[-1]["content"]


def _check_messages(body: Any) -> tuple[str, list[dict[str, str]], int | None, bool]:
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, '"model" is required (e.g. "router").')
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise ApiError(400, '"messages" must be a non-empty list of {"role", "content"} objects.')
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant") or not isinstance(
                m.get("content"), str):
            raise ApiError(400, f"messages[{i}] must be {{\"role\": \"system\"|\"user\"|\"assistant\", \"content\": \"...\"}}.")
        out.append({"role": m["role"], "content": m["content"]})
    if not any(m["role"] == "user" for m in out):
        raise ApiError(400, '"messages" has no user message.')
    mt = body.get("max_tokens", body.get("max_completion_tokens"))
    if mt is not None and (isinstance(mt, bool) or not isinstance(mt, int) or not 1 <= mt <= 4096):
        raise ApiError(400, '"max_tokens" must be an integer between 1 and 4096.')
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, '"stream" must be true or false.')
    return model, out, mt, stream


def create_app(service: Service) -> Any:
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

    app = FastAPI(title="modelmix router", docs_url=None, redoc_url=None)
    limit = service.cfg.serve.max_request_bytes

    def err(status: int, message: str, code: str = "invalid_request_error") -> JSONResponse:
        # 429/503 say when to come back (the openai client honours Retry-After in its retries)
        headers = {"Retry-After": "1"} if status in (429, 503) else None
        return JSONResponse({"error": {"message": message, "type": "invalid_request_error" if status < 500 else
                                       "server_error", "code": code}}, status_code=status, headers=headers)

    @app.exception_handler(ApiError)
    async def _api_error(_req: Request, e: ApiError) -> JSONResponse:
        return err(e.status, e.message, e.code)

    @app.exception_handler(Exception)
    async def _internal(_req: Request, e: Exception) -> JSONResponse:  # a bug, reported as JSON
        return err(500, f"internal error: {type(e).__name__}: {e}", "internal_error")

    async def body_of(request: Request) -> Any:
        n = request.headers.get("content-length")
        if n is not None and n.isdigit() and int(n) > limit:
            raise ApiError(413, f"request body of {n} bytes is over the limit of {limit}.", "request_too_large")
        raw = await request.body()
        if len(raw) > limit:
            raise ApiError(413, f"request body is over the limit of {limit} bytes.", "request_too_large")
        try:
            return json.loads(raw)
        except ValueError as e:
            raise ApiError(400, f"the request body is not valid JSON ({e}).") from None

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        down = sorted(set(service.backends) - service.healthy())
        return {"status": "ok" if not down else "degraded", "down": down}

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        names = VIRTUAL + list(service.backends)
        return {"object": "list", "data": [{"id": n, "object": "model", "created": 0, "owned_by": "modelmix"}
                                           for n in names]}

    @app.get("/metrics")
    def metrics() -> PlainTextResponse:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return PlainTextResponse(generate_latest(service.registry).decode(), media_type=CONTENT_TYPE_LATEST)

    @app.post("/admin/reload")
    async def reload() -> dict[str, Any]:
        from starlette.concurrency import run_in_threadpool

        from modelmix.errors import ModelmixError

        try:
            return await run_in_threadpool(service.reload)
        except ModelmixError as e:  # a bad config: the old one keeps serving
            raise ApiError(400, f"reload refused, still serving the previous config: {e}", "invalid_config") from None

    @app.post("/v1/feedback")
    async def feedback(request: Request) -> dict[str, Any]:
        body = await body_of(request)
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object.")
        from starlette.concurrency import run_in_threadpool

        event = await run_in_threadpool(service.feedback, body)
        return {"ok": True, "event": event}

    def record(meta: dict[str, Any], query: str, text: str, seconds: float, iid: str | None = None) -> str:
        iid = service.store.log(query, meta.get("distribution", {}), meta["strategy"], meta["models"],
                                meta.get("weights", [1.0]), answer=text, latency_ms=seconds * 1000,
                                extra={k: v for k, v in meta.items() if k in ("per_model_ms", "why", "candidates",
                                                                               "draft", "pipeline", "steps", "critique",
                                                                               "withheld")}, interaction_id=iid)
        service.m_requests.labels(meta["strategy"], "ok").inc()
        service.m_latency.labels(meta["strategy"]).observe(seconds)
        meta["latency_ms"] = round(seconds * 1000, 2)
        return iid

    def chunk(iid: str, created: int, model: str, delta: dict[str, Any], finish: str | None,
              extra: dict[str, Any] | None = None) -> str:
        obj = {"id": iid, "object": "chat.completion.chunk", "created": created, "model": model,
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **(extra or {})}
        return f"data: {json.dumps(obj)}\n\n"

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        import uuid

        from starlette.concurrency import run_in_threadpool

        model, messages, max_tokens, stream = _check_messages(await body_of(request))
        query = _last_user(messages)
        if not service.slots.acquire(blocking=False):
            service.m_requests.labels("-", "rejected").inc()
            raise ApiError(429, f"the router is answering {service.cfg.serve.max_concurrent} requests already; "
                           "retry shortly.", "rate_limited")
        created = int(time.time())
        t0 = time.perf_counter()
        meta: dict[str, Any] = {}
        try:
            d = await run_in_threadpool(service.decide, model, query)
            if not stream:
                text, meta = await run_in_threadpool(service.run, d, model, messages, max_tokens)
                iid = await run_in_threadpool(record, meta, query, text, time.perf_counter() - t0)
            else:  # run up to the first piece here: a failure before it still gets its own HTTP status
                gen = service.pieces(d, model, messages, max_tokens, meta)
                first = await run_in_threadpool(next, gen, None)
        except ApiError:
            service.slots.release()
            service.m_requests.labels("-", "error").inc()
            raise
        except BaseException:
            service.slots.release()
            raise
        if not stream:
            service.slots.release()
            return {"id": iid, "object": "chat.completion", "created": created, "model": model,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                 "finish_reason": "stop"}],
                    "usage": service.usage(meta, messages, text), "modelmix": public(meta)}
        iid = f"cmpl-{uuid.uuid4().hex}"

        def live() -> Iterator[str]:  # pieces go out as they are decided; the answer is logged once complete
            parts = [] if first is None else [first]
            try:
                yield chunk(iid, created, model, {"role": "assistant", "content": ""}, None)
                if first is not None:
                    yield chunk(iid, created, model, {"content": first}, None)
                try:
                    for piece in gen:
                        parts.append(piece)
                        yield chunk(iid, created, model, {"content": piece}, None)
                except ApiError as e:  # after the headers: the error goes in the stream, as OpenAI's does
                    err = {"error": {"message": e.message, "type": "server_error", "code": e.code}}
                    yield f"data: {json.dumps(err)}\n\n"
                    service.m_requests.labels(meta.get("strategy", "-"), "error").inc()
                    return
                record(meta, query, "".join(parts), time.perf_counter() - t0, iid)
                yield chunk(iid, created, model, {}, "stop", {"modelmix": public(meta)})
                yield "data: [DONE]\n\n"
            finally:
                gen.close()  # a client gone mid-answer: its row is cancelled at the engine's next step
                service.slots.release()

        return StreamingResponse(live(), media_type="text/event-stream")

    return app


def build_service(config: str) -> Service:
    """The service of a config file: router (encoder + calibration), store, and a learner brought up to date
    with every feedback event in the store."""
    from modelmix.router import Router
    from modelmix.router.learner import Learner
    from modelmix.router.store import Store

    router = Router.from_config(config)
    store = Store(router.cfg.store_url())
    service = Service(router, store, learner=Learner.for_config(router.cfg))
    service.config_path = config
    service.sync_learner(force=True)
    return service


def app_factory() -> Any:
    """For ``uvicorn --factory`` (one call per worker process): the config path comes from the environment."""
    import os

    return create_app(build_service(os.environ["MODELMIX_ROUTER_CONFIG"]))


def serve(config: str, host: str = "127.0.0.1", port: int = 8000, workers: int = 1) -> None:
    """Serve ``config``: one process, or ``workers`` uvicorn worker processes sharing the port and the store
    (each loads the encoder and its models; their learners follow the shared store)."""
    import os

    import uvicorn

    from modelmix.router.config import load_router_config

    load_router_config(config)  # every check before any worker starts
    if workers == 1:
        import signal

        service = build_service(config)

        def on_hup(*_: Any) -> None:  # SIGHUP: reload in the background; a bad config is reported and ignored
            def run() -> None:
                try:
                    service.reload()
                except Exception as e:  # noqa: BLE001 - a reload must never take the server down
                    print(f"modelmix serve: reload refused, still serving the previous config: {e}", file=sys.stderr)

            threading.Thread(target=run, daemon=True).start()

        signal.signal(signal.SIGHUP, on_hup)
        try:
            uvicorn.run(create_app(service), host=host, port=port, log_level="warning")
        finally:
            service.close()
            service.store.close()
        return
    os.environ["MODELMIX_ROUTER_CONFIG"] = str(os.path.abspath(config))
    uvicorn.run("modelmix.router.serve:app_factory", factory=True, host=host, port=port, workers=workers,
                log_level="warning")
