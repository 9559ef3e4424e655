"""The four defences of arXiv 2406.07188 as conversations, a whole prompt set per turn.

* ``none``: the model answers; that answer is final.
* ``rr`` (response rewriting): the model answers, is asked to critique its answer (:data:`CRITIQUE_PROMPT`),
  then to rewrite it using the critique (:data:`REWRITE_PROMPT`); the rewrite is final.
* ``rr-extcrit``: as ``rr``, but an external critic model writes the critique turn.
* ``rr-merge``: as ``rr``, run by one model: the model and the critic merged linearly
  (``critique.merge``), so the critic's skill is there without a second model at inference.

Each turn is one batched call over every prompt still in play (all of them: the paper rewrites every
answer, safe or not), so a strategy costs 1 (none) or 3 (the RR family) model calls per prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from modelmix.critique.chat import Chat
from modelmix.critique.prompts import CRITIQUE_PROMPT, REWRITE_PROMPT, Prompt

STRATEGIES = ("none", "rr", "rr-extcrit", "rr-merge")
NEEDS_CRITIC = ("rr-extcrit", "rr-merge")


def converse(prompts: Sequence[Prompt], strategy: str, model: Chat, critic: Chat | None = None, *,
             max_new_tokens: int = 256, critique_max_new_tokens: int | None = None,
             critique_prompt: str = CRITIQUE_PROMPT, rewrite_prompt: str = REWRITE_PROMPT) -> list[dict[str, Any]]:
    """Run ``strategy`` on every prompt; one row per prompt with the whole conversation, each turn's author
    and generated tokens, and the final answer. ``model`` is the merged model for ``rr-merge``; ``critic``
    is used by ``rr-extcrit`` only."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}")
    if strategy == "rr-extcrit" and critic is None:
        raise ValueError("rr-extcrit needs a critic model")
    convs = [list(p.messages) for p in prompts]
    turns: list[list[dict[str, Any]]] = [[] for _ in prompts]

    def turn(chat: Chat, what: str, budget: int) -> None:
        for conv, log, (text, n) in zip(convs, turns, chat.generate(convs, budget), strict=True):
            conv.append({"role": "assistant", "content": text})
            log.append({"turn": what, "by": chat.name, "tokens": n})

    turn(model, "answer", max_new_tokens)
    if strategy != "none":
        for c in convs:
            c.append({"role": "user", "content": critique_prompt})
        turn(critic if strategy == "rr-extcrit" and critic is not None else model, "critique",
             critique_max_new_tokens or max_new_tokens)
        for c in convs:
            c.append({"role": "user", "content": rewrite_prompt})
        turn(model, "rewrite", max_new_tokens)
    rows = []
    for p, conv, log in zip(prompts, convs, turns, strict=True):
        said = [m["content"] for m in conv[len(p.messages):] if m["role"] == "assistant"]
        rows.append({**p.to_dict(), "strategy": strategy, "prompt_turns": len(p.messages), "messages": conv, "turns": log, "answer": said[0],
                     **({"critique": said[1]} if len(said) > 1 else {}), "final": said[-1],
                     "calls": len(log), "tokens": sum(t["tokens"] for t in log)})
    return rows
