"""The models a critique run talks to: local chat model directories (batched) and OpenAI-compatible servers.

Both wrap the router's backends (``modelmix.router.backends``), so a conversation is rendered exactly as the
router renders it (the model's own chat template; a zoo model without one gets its last user message and
answers one line). What this module adds is what a benchmark needs and a server does not:

* a whole turn of many conversations at once: a local model decodes them in left-padded batches through
  ``eval.metrics.generate_greedy`` (KV cache, greedy, until eos); a remote one sends them concurrently;
* the cost of every call: generated tokens per conversation, calls and seconds per model.

A model reference is a local directory, or ``URL#MODEL`` for a server (``http://127.0.0.1:8000/v1#qwen``;
the key, if any, from ``$OPENAI_API_KEY``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelmix.errors import InputError

Conversation = list[dict[str, str]]


@dataclass
class Usage:
    """What one model spent in a run: calls (one per conversation per turn), generated tokens, seconds."""

    calls: int = 0
    tokens: int = 0
    seconds: float = 0.0


class Chat:
    """A model that answers the last user turn of many conversations (greedy). Subclasses implement
    :meth:`_generate`; :meth:`generate` counts the cost."""

    name: str
    weights_bytes: int = 0  # parameters held in this process (0 for a remote model)

    def __init__(self, name: str) -> None:
        self.name = name
        self.usage = Usage()

    def generate(self, conversations: Sequence[Conversation], max_new_tokens: int) -> list[tuple[str, int]]:
        """``(answer, generated tokens)`` per conversation, in order."""
        if not conversations:
            return []
        t0 = time.perf_counter()
        out = self._generate(conversations, max_new_tokens)
        self.usage.seconds += time.perf_counter() - t0
        self.usage.calls += len(conversations)
        self.usage.tokens += sum(n for _, n in out)
        return out

    def _generate(self, conversations: Sequence[Conversation], max_new_tokens: int) -> list[tuple[str, int]]:
        raise NotImplementedError


class LocalChat(Chat):
    """A local decoder: conversations rendered by the router's ``LocalBackend``, decoded in batches."""

    def __init__(self, name: str, backend: Any, *, batch_size: int | None = None) -> None:
        super().__init__(name)
        self.backend, self.batch_size = backend, batch_size

    @property
    def em(self) -> Any:
        return self.backend.em

    @property
    def weights_bytes(self) -> int:  # type: ignore[override]
        return sum(p.numel() * p.element_size() for p in self.em.model.parameters())

    def _generate(self, conversations: Sequence[Conversation], max_new_tokens: int) -> list[tuple[str, int]]:
        from modelmix.eval.metrics import generate_greedy

        rendered = [self.backend.prompt_ids(c) for c in conversations]
        one_line = rendered[0][1]  # a property of the model (chat template or not), the same for every row
        counts: list[int] = []
        texts = generate_greedy(self.em, [ids for ids, _ in rendered], [max_new_tokens] * len(rendered),
                                batch_size=self.batch_size, until="line" if one_line else "eos", counts=counts)
        return [(t.strip(), n) for t, n in zip(texts, counts, strict=True)]


class RemoteChat(Chat):
    """An OpenAI-compatible server through the router's ``RemoteBackend`` (timeouts, retries), with up to
    ``concurrency`` requests in flight."""

    def __init__(self, name: str, backend: Any, *, concurrency: int = 8) -> None:
        super().__init__(name)
        self.backend, self.concurrency = backend, concurrency

    def _generate(self, conversations: Sequence[Conversation], max_new_tokens: int) -> list[tuple[str, int]]:
        from concurrent.futures import ThreadPoolExecutor

        from modelmix.router.backends import BackendError

        try:
            with ThreadPoolExecutor(self.concurrency) as pool:
                return list(pool.map(lambda c: self.backend.chat(c, max_new_tokens), conversations))
        except BackendError as e:
            raise InputError(f"{e}. Check that the server is running and that it serves that model name.") from None


def parse_remote(ref: str) -> tuple[str, str] | None:
    """``(url, model)`` for ``URL#MODEL``, None for a local path."""
    if not ref.startswith(("http://", "https://")):
        return None
    url, sep, model = ref.partition("#")
    if not sep or not model:
        raise InputError(f"Model {ref!r} is a URL without a model name: write it as URL#MODEL, e.g. "
                         "http://127.0.0.1:8000/v1#qwen (the name the server knows the model by).")
    return url, model


def check_model_ref(ref: str, what: str, *, conversation: bool = False) -> None:
    """Fail before anything loads: a server reference must be well formed; a local one a decoder directory,
    with a chat template when it must answer about earlier turns (``conversation``: the RR family, guards)."""
    if parse_remote(ref) is not None:
        return
    from modelmix.eval.models import require_kind
    from modelmix.io.aux import has_chat_template

    p = Path(ref).expanduser()
    if not p.is_dir():
        raise InputError(f"{what} {ref}: no such model directory (give a local Hugging Face model directory, or "
                         "URL#MODEL for an OpenAI-compatible server).")
    require_kind(p, "decoder", f"{what} {ref}")
    if conversation and not has_chat_template(p):
        raise InputError(f"{what} {ref} has no chat template (tokenizer_config.json 'chat_template' or "
                         "chat_template.jinja): it would see only the last user message, so asked to critique or "
                         "rewrite its answer it would never see that answer. Use a chat model, or add its "
                         "template to the tokenizer files.")


def open_chat(ref: str, *, name: str | None = None, device: str = "cpu", batch_size: int | None = None,
              concurrency: int = 8, timeout_s: float = 120.0) -> Chat:
    """A :class:`Chat` for a model reference (see the module docstring); a local model loads now."""
    from modelmix.router.backends import RemoteBackend

    check_model_ref(ref, "Model")  # callers check the chat template where the conversation matters
    remote = parse_remote(ref)
    if remote is not None:
        url, model = remote
        rb = RemoteBackend(name or model, url, model, api_key=os.environ.get("OPENAI_API_KEY"), timeout_s=timeout_s)
        return RemoteChat(name or model, rb, concurrency=concurrency)
    path = Path(ref).expanduser()
    return local_chat(name or path.name, _load(path, device), batch_size=batch_size, path=path)


def local_chat(name: str, em: Any, *, batch_size: int | None = None, path: Path | None = None) -> LocalChat:
    """A :class:`LocalChat` over a model already in memory (loaded, or a merge written into a skeleton)."""
    from modelmix.router.backends import LocalBackend

    return LocalChat(name, LocalBackend(name, path or Path(name), em=em), batch_size=batch_size)


def _load(path: Path, device: str) -> Any:
    import torch

    from modelmix.eval.models import EvalModel

    return EvalModel.from_pretrained(path, device=device, dtype=torch.float32, kind="decoder")
