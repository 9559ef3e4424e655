"""``critique run``: load what the chosen strategies need, run them, and return one row per prompt and strategy.

Everything is checked before a model loads: the strategies, the prompts, a critic for the strategies that
need one, local weights for RR-merge, merge weights in [0, 1]. Models load once and are shared by the
strategies that use them; RR-merge's model is merged in memory into its own skeleton (or read from a merge
cache, ``merge_cache``), once per weight of a sweep.

Each row carries its run's cost (``run``): seconds of generation, the merge's seconds, the weights held for
that strategy (one model, or two for RR-extcrit), and the process's peak resident memory so far (a
high-water mark of the whole process: run one strategy per process, as ``critique bench`` does, for each
strategy's own peak).
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from modelmix.critique.chat import Chat, check_model_ref, open_chat, parse_remote
from modelmix.critique.prompts import CRITIQUE_PROMPT, REWRITE_PROMPT, Prompt
from modelmix.critique.strategies import NEEDS_CRITIC, STRATEGIES, converse
from modelmix.errors import InputError

DEFAULT_WEIGHT = 0.5  # the paper's 1.0/1.0, normalised


def parse_strategies(spec: str | Sequence[str]) -> list[str]:
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if "all" in items:
        items = list(STRATEGIES)
    for s in items:
        if s not in STRATEGIES:
            from modelmix.errors import did_you_mean

            raise InputError(f"Unknown strategy {s!r}{did_you_mean(s, STRATEGIES)}; give one or more of "
                             f"{', '.join(STRATEGIES)} (comma-separated) or all.")
    if not items:
        raise InputError(f"Give a strategy: one or more of {', '.join(STRATEGIES)} (comma-separated) or all.")
    return list(dict.fromkeys(items))


def parse_weights(spec: str | float | Sequence[float] | None) -> list[float]:
    if spec is None:
        return [DEFAULT_WEIGHT]
    raw = spec.split(",") if isinstance(spec, str) else [spec] if isinstance(spec, (int, float)) else list(spec)
    out = []
    for x in raw:
        try:
            w = float(x)
        except (TypeError, ValueError):
            raise InputError(f"--merge-weight {x!r} is not a number; give the critic's share in [0, 1], or "
                             "several comma-separated for a sweep (e.g. 0.25,0.5,0.75).") from None
        if not 0.0 <= w <= 1.0:
            raise InputError(f"--merge-weight {w:g} is outside [0, 1]: it is the critic's share of the linear merge "
                             "(0 = the model alone, 1 = the critic alone).")
        out.append(w)
    return list(dict.fromkeys(out))


def peak_rss_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / (1 << 20) if sys.platform == "darwin" else kb / 1024


def run(prompts: Sequence[Prompt], strategies: str | Sequence[str], model: str, *, critic: str | None = None,
        merge_weight: str | float | Sequence[float] | None = None, device: str = "cpu",
        batch_size: int | None = None, max_new_tokens: int = 256, critique_max_new_tokens: int | None = None,
        critique_prompt: str = CRITIQUE_PROMPT, rewrite_prompt: str = REWRITE_PROMPT,
        merge_cache: str | Path | None = None, log: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Rows of every (strategy, prompt): the strategies in the order given, RR-merge's last (its skeleton is
    loaded once the other strategies' models are released)."""
    strats = parse_strategies(strategies)
    weights = parse_weights(merge_weight)
    say = log or (lambda _m: None)
    if not prompts:
        raise InputError("No prompts to run.")
    if max_new_tokens < 1 or (critique_max_new_tokens is not None and critique_max_new_tokens < 1):
        raise InputError("--max-new-tokens must be at least 1.")
    from modelmix.devices import check_device

    device = check_device(device)
    needs = [s for s in strats if s in NEEDS_CRITIC]
    if needs and not critic:
        raise InputError(f"Strategy {needs[0]} needs --critic (the critic model: a directory, or URL#MODEL for "
                         "rr-extcrit).")
    rr = any(s != "none" for s in strats)
    check_model_ref(model, "--model", conversation=rr)
    if critic:
        check_model_ref(critic, "--critic", conversation=rr)
    if "rr-merge" in strats and (parse_remote(model) or parse_remote(str(critic))):
        raise InputError("rr-merge merges weights: --model and --critic must be local model directories, not "
                         "servers.")
    kw = {"max_new_tokens": max_new_tokens, "critique_max_new_tokens": critique_max_new_tokens,
          "critique_prompt": critique_prompt, "rewrite_prompt": rewrite_prompt}
    rows: list[dict[str, Any]] = []
    chats: dict[str, Chat] = {}

    def get(ref: str, name: str) -> Chat:
        if name not in chats:
            say(f"loading {name}: {ref}")
            chats[name] = open_chat(ref, name=name, device=device, batch_size=batch_size)
        return chats[name]

    def record(strategy: str, label: str, out: list[dict[str, Any]], used: list[Chat], t0: float,
               extra: dict[str, Any]) -> None:
        cost = {"seconds": round(time.perf_counter() - t0, 3),
                "weights_mb": round(sum(c.weights_bytes for c in used) / 2**20, 1),
                "peak_rss_mb": round(peak_rss_mb(), 1), "models": [c.name for c in used], **extra}
        for r in out:
            r["label"], r["run"] = label, cost
        rows.extend(out)
        say(f"{label}: {len(out)} prompts in {cost['seconds']:.1f} s")

    for s in strats:
        if s == "rr-merge":
            continue
        m = get(model, "model")
        used = [m] + ([get(str(critic), "critic")] if s == "rr-extcrit" else [])
        t0 = time.perf_counter()
        out = converse(prompts, s, m, chats.get("critic") if s == "rr-extcrit" else None, **kw)
        for r in out:
            r["model"] = model
            if s == "rr-extcrit":
                r["critic"] = critic
        record(s, s, out, used, t0, {})
    if "rr-merge" in strats:
        assert critic is not None
        chats.clear()  # the model and critic of the other strategies are not needed any more
        import gc

        gc.collect()
        merged: Any = None
        for w in weights:
            label = "rr-merge" if len(weights) == 1 else f"rr-merge@{w:g}"
            t0 = time.perf_counter()
            if merge_cache is not None:
                from modelmix.critique.merge import cached_merge

                path, reused = cached_merge(model, critic, w, merge_cache)
                merge_s = time.perf_counter() - t0
                say(f"merged model at weight {w:g}: {path} ({'cached' if reused else f'written in {merge_s:.1f} s'})")
                chat = open_chat(str(path), name=f"merged@{w:g}", device=device, batch_size=batch_size)
            else:
                from modelmix.critique.merge import MergedChat

                if merged is None:
                    say(f"opening {model} and {critic} for the merge")
                    merged = MergedChat(model, critic, device=device, batch_size=batch_size)
                chat = merged.at(w)
                merge_s = merged.merge_seconds
                say(f"merged in memory at weight {w:g} in {merge_s:.1f} s")
            t1 = time.perf_counter()
            out = converse(prompts, "rr-merge", chat, None, **kw)
            for r in out:
                r.update(model=model, critic=critic, weight=w)
            record("rr-merge", label, out, [chat], t1, {"merge_seconds": round(merge_s, 3)})
        if merged is not None:
            merged.close()
    return rows
