"""The models a router serves: in-process Hugging Face directories and remote OpenAI-compatible servers.

* :class:`LocalBackend` loads a local model directory once, on first use, and answers with greedy decoding
  over a KV cache. The prompt follows the model directory, not the client: a tokenizer with a chat template
  gets the whole conversation through it; a model without one (the modelmix zoo's) gets the last user
  message followed by its own prompt separator and answers one line, as it was trained.
* :func:`mixed_generate` decodes with several local models that share a vocabulary at once: each step's
  next-token distribution is the weighted mixture of the models' distributions (token-level ensembling).
  In a server, all of this runs in the batching engine's thread (``router.engine``).
* :class:`RemoteBackend` forwards to any OpenAI-compatible server (vLLM, llama.cpp, Ollama, another modelmix)
  with the official ``openai`` client (timeout, retries); after ``failures`` consecutive errors it is
  marked down for ``cooldown_s`` (a circuit breaker), so the router skips it and reports it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch


class BackendError(RuntimeError):
    """A model could not answer (remote server down, timeout, broken model directory)."""


class LocalBackend:
    kind = "local"

    def __init__(self, name: str, path: Path, max_new_tokens: int = 256, engine: Any = None, em: Any = None) -> None:
        self.name, self.path, self.max_new_tokens = name, path, max_new_tokens
        self.engine = engine  # router.engine.Engine: batched generation in the server's torch thread
        self._em: Any = em  # an EvalModel already in memory (a merge in a skeleton), else loaded on first use
        self._load_lock = threading.Lock()
        self.lock = threading.Lock()  # one generation at a time per model (torch runs it on all cores anyway)

    @property
    def em(self) -> Any:
        if self._em is None:
            with self._load_lock:
                if self._em is None:
                    from modelmix.eval.models import EvalModel

                    self._em = EvalModel.from_pretrained(self.path, kind="decoder")
        return self._em

    def healthy(self) -> bool:
        return True

    def prompt_ids(self, messages: Sequence[dict[str, str]]) -> tuple[list[int], bool]:
        """Token ids of the prompt, and whether the answer stops at the first line (models without a chat
        template, trained on one-line answers)."""
        tok = self.em.tokenizer
        if getattr(tok, "chat_template", None):
            ids = tok.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True)
            if isinstance(ids, dict) or hasattr(ids, "keys"):
                ids = ids["input_ids"]
            return list(ids), False
        user = [m["content"] for m in messages if m.get("role") == "user"]
        text = (user[-1] if user else messages[-1]["content"]) + self.em.separator
        return list(tok(text)["input_ids"]), True

    def loglik(self, messages: Sequence[dict[str, str]], answers: Sequence[str]) -> list[float]:
        """Mean log-likelihood per token of each answer as this model's reply to ``messages`` (in its own
        prompt convention; a one-line model's answer ends with its newline): the judge ranker's score.
        An empty answer scores -inf. One forward pass over all answers (right-padded)."""
        tok = self.em.tokenizer
        prompt, one_line = self.prompt_ids(messages)
        seqs: list[tuple[list[int], int]] = []
        for a in answers:
            if getattr(tok, "chat_template", None) and not one_line:
                full = tok.apply_chat_template([*messages, {"role": "assistant", "content": a}], tokenize=True)
                if isinstance(full, dict) or hasattr(full, "keys"):
                    full = full["input_ids"]
                full = list(full)
            else:
                user = [m["content"] for m in messages if m.get("role") == "user"]
                text = (user[-1] if user else messages[-1]["content"]) + self.em.separator
                full = list(tok(text + a.strip() + "\n")["input_ids"])
            seqs.append((full, len(prompt)))
        width = max(len(f) for f, _ in seqs)
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        attn = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, (f, _) in enumerate(seqs):
            ids[i, :len(f)] = torch.tensor(f)
            attn[i, :len(f)] = 1
        with torch.inference_mode(), self.em.threads():
            logp = torch.log_softmax(self.em.model(input_ids=ids.to(self.em.device),
                                                   attention_mask=attn.to(self.em.device)).logits.float(), -1).cpu()
        out = []
        for i, ((f, start), a) in enumerate(zip(seqs, answers, strict=True)):
            if not a.strip() or len(f) <= start:
                out.append(float("-inf"))
                continue
            tgt = torch.tensor(f[start:])
            lp = logp[i, start - 1:len(f) - 1].gather(1, tgt[:, None]).squeeze(1)
            out.append(float(lp.mean()))
        return out

    def stream(self, messages: Sequence[dict[str, str]], max_new_tokens: int | None = None) -> Iterator[str]:
        """Text pieces as they are decoded: through the server's engine (batched with the model's other
        requests) when there is one, else here in the calling thread, one generation at a time."""
        ids, one_line = self.prompt_ids(messages)
        budget = max_new_tokens or self.max_new_tokens
        if self.engine is not None:
            yield from self.engine.generate(self, ids, budget, one_line)
            return
        with self.lock:
            yield from mixed_generate([self], [1.0], ids, budget, one_line)

    def complete(self, messages: Sequence[dict[str, str]], max_new_tokens: int | None = None) -> str:
        return "".join(self.stream(messages, max_new_tokens))


def _step(model: Any, ids: torch.Tensor, cache: Any, cache_kw: str) -> tuple[torch.Tensor, Any]:
    from modelmix.eval.metrics import _cache_of

    kw = {cache_kw: cache} if cache is not None else {}
    out = model(input_ids=ids, use_cache=True, logits_to_keep=1, **kw)
    return out.logits[0, -1].float(), _cache_of(out)


def mixed_steps(backends: Sequence[LocalBackend], weights: Sequence[float], prompt: list[int],
                text: Any) -> Iterator[None]:
    """Greedy decoding from the weighted mixture of the models' next-token distributions, one token per
    ``next()`` (what the serving engine interleaves with its batches); each token goes to ``text`` (an
    ``engine.TextOut``), which streams the pieces and says when to stop."""
    from modelmix.eval.metrics import _cache_kwarg

    ems = [b.em for b in backends]
    w = torch.tensor([float(x) for x in weights])
    w = w / w.sum()
    caches: list[Any] = [None] * len(ems)
    kws = [_cache_kwarg(em.model) for em in ems]
    ids = torch.tensor([prompt], dtype=torch.long)
    while True:
        with torch.inference_mode():  # entered per token: never suspended inside the mode
            probs: torch.Tensor | None = None
            for i, em in enumerate(ems):
                with em.threads():
                    logits, caches[i] = _step(em.model, ids.to(em.device), caches[i], kws[i])
                p = torch.softmax(logits.cpu(), -1) * w[i]
                probs = p if probs is None else probs + p
            assert probs is not None
            nxt = int(probs.argmax())
        if text.push(nxt):
            return
        yield
        ids = torch.tensor([[nxt]], dtype=torch.long)


def mixed_generate(backends: Sequence[LocalBackend], weights: Sequence[float], prompt: list[int],
                   max_new_tokens: int, one_line: bool) -> Iterator[str]:
    """:func:`mixed_steps` in the calling thread, yielding text pieces as tokens are decided (one model:
    plain greedy decoding). Stops at eos, the token budget, or (``one_line``) the end of the first line."""
    from modelmix.router.engine import Stream, TextOut

    out = Stream()
    for _ in mixed_steps(backends, weights, prompt, TextOut(backends[0].em.tokenizer, max_new_tokens, one_line,
                                                             out)):
        yield from out.drain()
    yield from out.drain()


class RemoteBackend:
    kind = "remote"

    def __init__(self, name: str, url: str, model: str, *, api_key: str | None = None, timeout_s: float = 60.0,
                 max_new_tokens: int = 256, failures: int = 3, cooldown_s: float = 30.0) -> None:
        from openai import OpenAI

        self.name, self.url, self.model, self.max_new_tokens = name, url, model, max_new_tokens
        self.client = OpenAI(base_url=url, api_key=api_key or "none", timeout=timeout_s, max_retries=1)
        self.failures, self.cooldown_s = failures, cooldown_s
        self._errors = 0
        self._down_until = 0.0
        self.last_error: str | None = None

    def healthy(self) -> bool:
        return time.monotonic() >= self._down_until

    def _failed(self, e: Exception) -> BackendError:
        self._errors += 1
        self.last_error = f"{type(e).__name__}: {e}"
        if self._errors >= self.failures:
            self._down_until = time.monotonic() + self.cooldown_s
        return BackendError(f"model {self.name} ({self.url}) failed: {self.last_error}")

    def stream(self, messages: Sequence[dict[str, str]], max_new_tokens: int | None = None) -> Iterator[str]:
        try:
            chunks = self.client.chat.completions.create(model=self.model, messages=list(messages),  # type: ignore[arg-type]
                                                         max_tokens=max_new_tokens or self.max_new_tokens,
                                                         temperature=0, stream=True)
            for ch in chunks:
                if ch.choices and ch.choices[0].delta and ch.choices[0].delta.content:
                    yield ch.choices[0].delta.content
        except Exception as e:  # noqa: BLE001 - every client error means "this backend cannot answer now"
            raise self._failed(e) from None
        self._errors = 0

    def complete(self, messages: Sequence[dict[str, str]], max_new_tokens: int | None = None) -> str:
        return "".join(self.stream(messages, max_new_tokens))

    def chat(self, messages: Sequence[dict[str, str]], max_new_tokens: int | None = None) -> tuple[str, int]:
        """One non-streamed answer and the tokens the server says it generated (its ``usage``; the answer's
        whitespace-separated words when it reports none): what a benchmark counts as cost."""
        try:
            r = self.client.chat.completions.create(model=self.model, messages=list(messages),  # type: ignore[arg-type]
                                                    max_tokens=max_new_tokens or self.max_new_tokens,
                                                    temperature=0)
            text = (r.choices[0].message.content or "") if r.choices else ""
        except Exception as e:  # noqa: BLE001 - every client error means "this backend cannot answer now"
            raise self._failed(e) from None
        self._errors = 0
        used = getattr(r, "usage", None)
        tokens = getattr(used, "completion_tokens", None) if used is not None else None
        return text.strip(), int(tokens) if tokens is not None else len(text.split())


def build_backends(cfg: Any, engine: Any = None) -> dict[str, LocalBackend | RemoteBackend]:
    """One backend per config model (local ones load lazily, on first use; with ``engine`` they generate
    through it)."""
    import os

    out: dict[str, LocalBackend | RemoteBackend] = {}
    for name, spec in cfg.models.items():
        if spec.path is not None:
            out[name] = LocalBackend(name, cfg.model_path(name), spec.max_new_tokens, engine)
        else:
            key = os.environ.get(spec.api_key_env) if spec.api_key_env else None
            out[name] = RemoteBackend(name, spec.url, spec.model, api_key=key, timeout_s=spec.timeout_s,
                                      max_new_tokens=spec.max_new_tokens)
    return out
