"""Metric implementations on an :class:`~modelmix.eval.models.EvalModel` (validated examples in, floats out).

All metrics run under ``torch.inference_mode``, sort examples by token length and pad each batch only to
its own longest row (dynamic padding), so a batch of short prompts costs what short prompts cost.
Results never depend on the batch size or order beyond float rounding.

``exact_match`` (decoder) -> ``{"exact_match": fraction}``
    Greedy decoding with a KV cache over left-padded batches (own loop: ~2x faster than ``model.generate``
    on small models, whose per-step overhead dominates). The prompt is ``input`` tokenised with the
    tokenizer's special tokens (bos). A row stops at eos, at a newline once it has produced non-space
    text (leading whitespace/newlines are skipped, so both ``"input output"`` and ``"input\\noutput"``
    training formats work), or after its token budget (``max_new_tokens``, default ``2 * len(reference
    tokens) + 4``, enough for any exact match); the batch stops when every row has stopped. The
    prediction is the generated text up to that newline; both prediction and ``output`` are normalised by
    stripping and collapsing every whitespace run to one space, then compared exactly.

``loss`` (decoder) -> ``{"loss": value}``
    Per-token negative log-likelihood (nats) of the output given the input, tokenised exactly like
    LM-Cocktail 0.0.4 (``LM_Cocktail/utils.py``, ``preprocess_data_for_llm``/``llm_loss``):

    * ``ids = tok.encode(input + " " + output) + [eos]`` (special tokens on, so bos when the tokenizer adds
      it), truncated to ``max_length`` (2048);
    * the first ``len(tok.encode(input))`` positions are masked (-100), i.e. the scored tokens are
      ``ids[len(prompt):]``: the separator space (when it is its own token), the output and eos;
    * attention mask ``ids != pad_token_id`` (LM-Cocktail pads with pad and masks by id);
    * HF's causal-LM loss is the token-mean over a batch of ``batch_size=2`` consecutive examples (data
      order), and ``llm_loss`` averages those batch means.

    ``reduction="lmcocktail"`` (default) reproduces exactly that: mean over consecutive groups of
    ``group_size`` (2) examples of each group's token-mean NLL, whatever batching is used for speed.
    ``reduction="token"`` is the plain token-weighted mean over all scored tokens; ``"example"`` the mean
    of per-example token-means. The three coincide when every example has the same number of tokens.
    ``separator`` joins input and output. By default it is the model's own prompt convention
    (``EvalModel.separator``, see ``modelmix.eval.models.prompt_separator``): LM-Cocktail's ``" "`` for
    ordinary models, ``""`` for models trained on the plain concatenation ``input + output`` (the modelmix
    zoo), which would otherwise be scored on a space they never saw there.

``choice`` -> ``{"accuracy": ..., "accuracy_norm": ...}``
    Each option is scored as the summed log-probability of the tokens of ``input + " " + option`` after
    ``len(tok.encode(input))`` (same split as ``loss``, no eos). ``accuracy`` picks the highest sum,
    ``accuracy_norm`` the highest per-token mean (length-normalised). Ties go to the first option.

``retrieval`` (encoder) -> ``{"recall@1": ..., "mrr": ...}``
    Query and candidates (``pos + neg``) are embedded with the model's pooling (cls/mean/max over
    non-pad tokens, truncation at ``max_seq_length``) and ranked by cosine similarity. The rank of an
    example is ``1 + #{neg : sim(neg) >= max sim(pos)}`` (ties count against the model, so a collapsed
    encoder cannot score well); recall@1 is the fraction with rank 1, MRR the mean of ``1/rank``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor

from modelmix.errors import InputError
from modelmix.eval.data import answer_index
from modelmix.eval.models import EvalModel

LOSS_REDUCTIONS = ("lmcocktail", "token", "example")
_R = TypeVar("_R")
_TOKEN_BUDGET = 16384  # tokens per forward batch when batch_size is not given
_LOGIT_BUDGET = 1 << 26  # float32 logits elements per batch (256 MiB) when batch_size is not given
_MIN_ROWS = 8  # rows a batch keeps before padding may close it (smaller matmuls lose more than padding costs)


def normalize_text(s: str) -> str:
    """Strip and collapse whitespace runs to a single space (the exact_match normalisation)."""
    return " ".join(s.split())


def _threaded(fn: Callable[..., _R]) -> Callable[..., _R]:
    """Run a metric under ``em.threads()`` (see EvalModel.num_threads)."""

    @functools.wraps(fn)
    def wrapper(em: EvalModel, *args: Any, **kwargs: Any) -> _R:
        threads = getattr(em, "threads", None)
        if threads is None:
            return fn(em, *args, **kwargs)
        with threads():
            return fn(em, *args, **kwargs)

    return wrapper


def _require(em: EvalModel, kind: str, metric: str) -> None:
    if em.kind != kind:
        raise InputError(f"Metric {metric!r} needs a {kind} model, but {em.name} is a {em.kind}.")


def _batches(
    lengths: Sequence[int], batch_size: int | None, per_token: int, max_padding: float | None = None
) -> list[list[int]]:
    """Indices sorted by length (longest first), cut into batches of batch_size rows or a token budget.

    ``max_padding`` (only without ``batch_size``) also closes a batch of at least ``_MIN_ROWS`` rows
    before the next row would make more than that share of its tokens padding: every batch is padded to
    its longest row, and for short texts of a few distinct lengths (retrieval passages) one padded batch
    did a quarter more forward work than length buckets (all-MiniLM-L6-v2, 48 texts: 81 vs 61 ms)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    out: list[list[int]] = []
    cur: list[int] = []
    real = 0
    budget = max(1, min(_TOKEN_BUDGET, _LOGIT_BUDGET // max(1, per_token)))
    for i in order:
        width = lengths[cur[0]] if cur else lengths[i]  # longest row of the batch comes first
        full = len(cur) >= batch_size if batch_size else (len(cur) + 1) * max(width, 1) > budget
        if not full and not batch_size and max_padding is not None and len(cur) >= _MIN_ROWS:
            full = (len(cur) + 1) * width - (real + lengths[i]) > max_padding * (len(cur) + 1) * width
        if cur and full:
            out.append(cur)
            cur, real = [], 0
        cur.append(i)
        real += lengths[i]
    if cur:
        out.append(cur)
    return out


# ---------------------------------------------------------------------------------------- scoring
def _encode_pairs(
    em: EvalModel,
    prompts: Sequence[str],
    conts: Sequence[str],
    add_eos: bool | Sequence[bool],
    max_length: int,
    sep: str = " ",
) -> tuple[list[list[int]], list[int]]:
    """LM-Cocktail split: ids of ``prompt + sep + cont`` (+eos, per row when `add_eos` is a list) and the
    count of leading prompt tokens."""
    tok = em.tokenizer
    full = tok([p + sep + c for p, c in zip(prompts, conts, strict=True)])["input_ids"]
    uniq = sorted(set(prompts))
    plen_of = dict(zip(uniq, (len(x) for x in tok(uniq)["input_ids"]), strict=True))
    eos = [add_eos] * len(full) if isinstance(add_eos, bool) else list(add_eos)
    seqs = []
    for ids, e in zip(full, eos, strict=True):
        ids = list(ids) + ([tok.eos_token_id] if e else [])
        seqs.append(ids[:max_length])
    return seqs, [plen_of[p] for p in prompts]


@_threaded
def score_continuations(
    em: EvalModel,
    seqs: Sequence[Sequence[int]],
    prompt_lens: Sequence[int],
    *,
    batch_size: int | None = None,
    mask_pad_ids: bool = False,
) -> tuple[Tensor, Tensor]:
    """Per sequence: (sum of log p(token) over tokens at positions >= prompt_len, number of such tokens).

    Position 0 is never scored (nothing predicts it). ``mask_pad_ids`` reproduces LM-Cocktail's attention
    mask ``ids != pad_token_id`` (which also hides real tokens equal to the pad id, e.g. eos-as-pad).
    Returned tensors are float64 on the CPU, in input order.
    """
    model, dev = em.model, em.device
    pad = em.tokenizer.pad_token_id if em.tokenizer.pad_token_id is not None else 0
    vocab = model.get_output_embeddings().weight.shape[0] if model.get_output_embeddings() is not None else 1
    sums = torch.zeros(len(seqs), dtype=torch.float64)
    counts = torch.zeros(len(seqs), dtype=torch.float64)
    lengths = [len(s) for s in seqs]
    with torch.inference_mode():
        for idx in _batches(lengths, batch_size, vocab):
            width = max(lengths[i] for i in idx)
            ids = torch.full((len(idx), width), pad, dtype=torch.long)
            live = torch.zeros((len(idx), width), dtype=torch.bool)
            scored = torch.zeros((len(idx), width), dtype=torch.bool)
            for r, i in enumerate(idx):
                n = lengths[i]
                ids[r, :n] = torch.tensor(seqs[i], dtype=torch.long)
                live[r, :n] = True
                scored[r, max(prompt_lens[i], 1) : n] = True
            attn = ids.ne(pad) if mask_pad_ids else live
            ids, attn = ids.to(dev), attn.to(dev)
            logits = model(input_ids=ids, attention_mask=attn.long(), use_cache=False).logits
            # logits[:, t-1] predicts ids[:, t]; only gather the scored positions (memory: N x V, not B x L x V)
            tgt_mask = scored[:, 1:].to(dev)
            sel = logits[:, :-1][tgt_mask].float()
            lp = -F.cross_entropy(sel, ids[:, 1:][tgt_mask], reduction="none")
            row = torch.arange(len(idx), device=dev).unsqueeze(1).expand_as(tgt_mask)[tgt_mask]
            s = torch.zeros(len(idx), dtype=torch.float64, device=dev).index_add_(0, row, lp.double())
            c = tgt_mask.sum(1).double()
            sums[idx] = s.cpu()
            counts[idx] = c.cpu()
    return sums, counts


@_threaded
def loss(
    em: EvalModel,
    examples: Sequence[dict[str, Any]],
    *,
    batch_size: int | None = None,
    reduction: str = "lmcocktail",
    group_size: int = 2,
    max_length: int = 2048,
    separator: str | None = None,
) -> dict[str, float]:
    """Mean per-token NLL of ``output`` given ``input`` (see module docstring for the reductions);
    ``separator`` None: the model's own convention (``em.separator``)."""
    _require(em, "decoder", "loss")
    separator = em.separator if separator is None else separator
    if reduction not in LOSS_REDUCTIONS:
        raise InputError(
            f"Unknown loss reduction {reduction!r}; expected one of {', '.join(LOSS_REDUCTIONS)}."
        )
    if group_size < 1:
        raise InputError(f"loss group_size must be >= 1, got {group_size}.")
    seqs, plens = _encode_pairs(  # a row with "eos": false is a cut-off answer: no end of text to score
        em, [e["input"] for e in examples], [e["output"] for e in examples],
        [e.get("eos", True) is not False for e in examples], max_length, separator,
    )
    lp, n = score_continuations(
        em, seqs, plens, batch_size=batch_size, mask_pad_ids=reduction == "lmcocktail"
    )
    nll = -lp
    if reduction == "token":
        value = float(nll.sum() / n.sum())
    elif reduction == "example":
        value = float((nll / n).mean())
    else:
        groups = [
            (float(nll[i : i + group_size].sum()), float(n[i : i + group_size].sum()))
            for i in range(0, len(nll), group_size)
        ]
        value = sum(s / c if c else math.nan for s, c in groups) / len(groups)
    return {"loss": value}


@_threaded
def choice(
    em: EvalModel, examples: Sequence[dict[str, Any]], *, batch_size: int | None = None,
    separator: str | None = None,
) -> dict[str, float]:
    """Multiple-choice accuracy by summed and by per-token log-likelihood (``separator`` as in :func:`loss`)."""
    _require(em, "decoder", "choice")
    separator = em.separator if separator is None else separator
    prompts, conts, owner = [], [], []
    for k, e in enumerate(examples):
        for c in e["choices"]:
            prompts.append(e["input"])
            conts.append(c)
            owner.append(k)
    seqs, plens = _encode_pairs(em, prompts, conts, False, em.max_seq_length, separator)
    lp, n = score_continuations(em, seqs, plens, batch_size=batch_size)
    norm = lp / n.clamp(min=1)
    hit = hit_norm = 0
    start = 0
    for e in examples:
        k = len(e["choices"])
        gold = answer_index(e)
        hit += int(torch.argmax(lp[start : start + k])) == gold
        hit_norm += int(torch.argmax(norm[start : start + k])) == gold
        start += k
    return {"accuracy": hit / len(examples), "accuracy_norm": hit_norm / len(examples)}


# ---------------------------------------------------------------------------------------- generation
@_threaded
def generate_greedy(
    em: EvalModel,
    prompts: Sequence[str] | Sequence[list[int]],
    budgets: Sequence[int],
    *,
    batch_size: int | None = None,
    until: str = "line",
    counts: list[int] | None = None,
) -> list[str]:
    """Greedy completions of ``prompts`` (own KV-cache loop, left padding), cut as described for exact_match.

    A prompt is text (tokenised with the tokenizer's special tokens) or token ids already rendered (a
    chat template's). ``budgets[i]`` is the maximum number of new tokens for prompt i. ``until="line"`` stops a row at its
    first newline after text (one-line answers, exact match); ``until="eos"`` lets it write several lines
    and stops only at eos or the budget (chat answers: the self-critique conversations). ``counts``, when
    given, receives the number of tokens each row generated (eos excluded): the cost a caller reports.
    """
    if until not in ("line", "eos"):
        raise ValueError(f"until must be 'line' or 'eos', got {until!r}")
    by_line = until == "line"
    model, tok, dev = em.model, em.tokenizer, em.device
    has_nl, nl_after, content = em.token_classes()
    eos = torch.tensor(sorted(eos_ids(em)), dtype=torch.long, device=dev)
    pad = tok.pad_token_id
    texts = [i for i, p in enumerate(prompts) if isinstance(p, str)]
    enc: list[list[int]] = [list(p) if not isinstance(p, str) else [] for p in prompts]
    if texts:
        for i, ids in zip(texts, tok([prompts[i] for i in texts])["input_ids"], strict=True):
            enc[i] = list(ids)
    lengths = [len(x) for x in enc]
    results: list[str] = [""] * len(prompts)
    if counts is not None:
        counts[:] = [0] * len(prompts)
    # generation holds a KV cache per row: budget rows by prompt+budget tokens, but keep batches large
    bs_default = None if batch_size else 256
    cache_kw = _cache_kwarg(model)
    with torch.inference_mode():
        for idx in _batches(
            [lengths[i] + budgets[i] for i in range(len(prompts))], batch_size or bs_default, 1
        ):
            width = max(lengths[i] for i in idx)
            ids = torch.full((len(idx), width), pad, dtype=torch.long)
            attn = torch.zeros((len(idx), width), dtype=torch.long)
            for r, i in enumerate(idx):
                ids[r, width - lengths[i] :] = torch.tensor(enc[i], dtype=torch.long)
                attn[r, width - lengths[i] :] = 1
            ids, attn = ids.to(dev), attn.to(dev)
            budget = torch.tensor([budgets[i] for i in idx], device=dev)
            pos = (attn.cumsum(-1) - 1).clamp(min=0)
            out = model(
                input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True, logits_to_keep=1
            )
            cache = _cache_of(out)
            done = torch.zeros(len(idx), dtype=torch.bool, device=dev)
            seen = torch.zeros(len(idx), dtype=torch.bool, device=dev)
            steps: list[Tensor] = []
            live_steps: list[Tensor] = []
            max_steps = int(budget.max())
            for step in range(max_steps):
                nxt = out.logits[:, -1].argmax(-1)
                is_eos = torch.isin(nxt, eos)
                stop = is_eos | (has_nl[nxt] & (seen | nl_after[nxt])) if by_line else is_eos
                keep = ~done & ~is_eos  # a stopping newline token may carry text before the newline
                steps.append(nxt)
                live_steps.append(keep)
                seen |= content[nxt] & keep
                done |= stop | (budget <= step + 1)
                if bool(done.all()):
                    break
                attn = torch.cat([attn, torch.ones((len(idx), 1), dtype=attn.dtype, device=dev)], dim=1)
                pos = pos[:, -1:] + 1
                out = model(
                    input_ids=nxt.unsqueeze(1),
                    attention_mask=attn,
                    position_ids=pos,
                    use_cache=True,
                    **{cache_kw: cache},
                )
                cache = _cache_of(out)
            gen = torch.stack(steps, 1).cpu()
            keepm = torch.stack(live_steps, 1).cpu()
            for r, i in enumerate(idx):
                toks = gen[r][keepm[r]].tolist()
                text = tok.decode(toks, skip_special_tokens=not by_line).lstrip()
                results[i] = text.split("\n", 1)[0] if by_line else text.rstrip()
                if counts is not None:
                    counts[i] = len(toks)
    return results


def eos_ids(em: EvalModel) -> set[int]:
    """Every token that ends an answer: the tokenizer's eos and the model's generation config's (a chat
    model's end-of-turn token, e.g. ``<|eot_id|>`` or ``<end_of_turn>``, is often only there)."""
    ids = set()
    if em.tokenizer.eos_token_id is not None:
        ids.add(int(em.tokenizer.eos_token_id))
    gen = getattr(getattr(em.model, "generation_config", None), "eos_token_id", None)
    for i in gen if isinstance(gen, (list, tuple)) else [gen]:
        if isinstance(i, int):
            ids.add(i)
    return ids or {-1}


@_threaded
def _cache_kwarg(model: Any) -> str:
    """The forward() argument that takes the KV cache: ``cache`` in transformers 5.x (where
    ``past_key_values`` is deprecated), ``past_key_values`` before."""
    import inspect

    try:
        return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    except (TypeError, ValueError):
        return "past_key_values"


def _cache_of(out: Any) -> Any:
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def exact_match(
    em: EvalModel,
    examples: Sequence[dict[str, Any]],
    *,
    batch_size: int | None = None,
    max_new_tokens: int | None = None,
    per_row: bool = False,
) -> dict[str, Any]:
    """Fraction of examples whose normalised greedy completion equals the normalised ``output``; with
    ``per_row``, also ``hits``: 1/0 per example, in order (for paired comparisons of two models)."""
    _require(em, "decoder", "exact_match")
    if max_new_tokens is not None and max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be >= 1, got {max_new_tokens}.")
    refs = [e["output"] for e in examples]
    if max_new_tokens is None:
        ref_lens = [len(x) for x in em.tokenizer(refs, add_special_tokens=False)["input_ids"]]
        budgets = [2 * n + 4 for n in ref_lens]
    else:
        budgets = [max_new_tokens] * len(refs)
    preds = generate_greedy(em, [e["input"] for e in examples], budgets, batch_size=batch_size)
    row = [int(normalize_text(p) == normalize_text(r)) for p, r in zip(preds, refs, strict=True)]
    out: dict[str, Any] = {"exact_match": sum(row) / len(examples)}
    if per_row:
        out["hits"] = row
    return out


# ---------------------------------------------------------------------------------------- retrieval
def encoder_batches(tok: Any, texts: Sequence[str], max_length: int, hidden: int,
                    batch_size: int | None) -> Iterator[tuple[list[int], Any, Any]]:
    """``(indices, input_ids, attention_mask)`` per batch of ``texts`` (numpy int64, padded to the batch's
    longest row; rows of similar length batched together), for every encoder forward (torch or ONNX)."""
    import numpy as np

    enc = tok(list(texts), truncation=True, max_length=max_length)["input_ids"]
    lengths = [len(x) for x in enc]
    for idx in _batches(lengths, batch_size, hidden // 8, max_padding=0.1):
        width = max(lengths[i] for i in idx)
        ids = np.full((len(idx), width), tok.pad_token_id, dtype=np.int64)
        attn = np.zeros((len(idx), width), dtype=np.int64)
        for r, i in enumerate(idx):
            ids[r, : lengths[i]] = enc[i]
            attn[r, : lengths[i]] = 1
        yield idx, ids, attn


@_threaded
def embed(em: EvalModel, texts: Sequence[str], *, batch_size: int | None = None) -> Tensor:
    """L2-normalised embeddings (float32, CPU) of ``texts`` with the model's pooling (through
    ``em.runtime``, an :class:`~modelmix.eval.onnx_encoder.OnnxEncoder`, when one is attached)."""
    runtime = getattr(em, "runtime", None)
    if runtime is not None:
        return runtime.embed(texts, batch_size=batch_size)
    model, dev = em.model, em.device
    hidden = getattr(model.config, "hidden_size", 1)
    out = torch.zeros((len(texts), hidden), dtype=torch.float32)
    with torch.inference_mode():
        for idx, ids_np, attn_np in encoder_batches(em.tokenizer, texts, em.max_seq_length, hidden, batch_size):
            ids, attn = torch.from_numpy(ids_np).to(dev), torch.from_numpy(attn_np).to(dev)
            h = model(input_ids=ids, attention_mask=attn).last_hidden_state.float()
            m = attn.unsqueeze(-1).to(h.dtype)
            if em.pooling == "cls":
                v = h[:, 0]
            elif em.pooling == "mean":
                v = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
            else:
                v = h.masked_fill(m == 0, float("-inf")).max(1).values
            out[idx] = F.normalize(v, dim=-1).cpu()
    return out


@_threaded
def retrieval(
    em: EvalModel, examples: Sequence[dict[str, Any]], *, batch_size: int | None = None
) -> dict[str, float]:
    """Recall@1 and MRR of ranking ``pos + neg`` by cosine similarity to ``query``."""
    _require(em, "encoder", "retrieval")
    texts: dict[str, int] = {}
    for e in examples:
        for t in [e["query"], *e["pos"], *e["neg"]]:
            texts.setdefault(t, len(texts))
    vecs = embed(em, list(texts), batch_size=batch_size)
    r1 = rr = 0.0
    for e in examples:
        q = vecs[texts[e["query"]]]
        pos = vecs[[texts[t] for t in e["pos"]]] @ q
        best = float(pos.max())
        ahead = int((vecs[[texts[t] for t in e["neg"]]] @ q >= best).sum()) if e["neg"] else 0
        r1 += ahead == 0
        rr += 1.0 / (1 + ahead)
    return {"recall@1": r1 / len(examples), "mrr": rr / len(examples)}
