"""Small, fast scorers used to fill the manifest's ``scores`` block at build time.

Decoder: batched greedy decoding (left padding, KV cache, stop at EOS or newline) for exact match, and
mean per-token NLL of ``output`` + EOS given ``input`` for loss. Encoder: rank each query's ``pos`` among
its own ``pos + neg`` candidates by cosine similarity (recall@1 and MRR). Deliberately self-contained so
the zoo can be built before/without the general evaluation harness in `modelmix.eval`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def _encode_batch(tok: Any, texts: Sequence[str]) -> tuple[Any, Any]:
    import torch

    ids = [tok(t)["input_ids"] for t in texts]
    width = max(len(x) for x in ids)
    pad = tok.pad_token_id
    input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in ids], dtype=torch.long)
    mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids], dtype=torch.long)
    return input_ids, mask


def greedy_generate(model: Any, tok: Any, prompts: Sequence[str], max_new_tokens: int = 16,
                    batch_size: int = 64) -> list[str]:
    """Greedy completions of `prompts`, cut at the first EOS or newline (which are not returned)."""
    import torch

    from modelmix.eval.metrics import _cache_kwarg, _cache_of

    kw = _cache_kwarg(model)
    nl = tok.convert_tokens_to_ids("\n")
    stops = {tok.eos_token_id, nl}
    results: list[str] = []
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(prompts), batch_size):
            input_ids, mask = _encode_batch(tok, prompts[start:start + batch_size])
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            out = model(input_ids=input_ids, attention_mask=mask, position_ids=pos, use_cache=True)
            past = _cache_of(out)
            next_tok = out.logits[:, -1].argmax(-1)
            n = input_ids.shape[0]
            gen: list[list[int]] = [[] for _ in range(n)]
            done = torch.zeros(n, dtype=torch.bool)
            last_pos = pos[:, -1]
            for _ in range(max_new_tokens):
                for i, t in enumerate(next_tok.tolist()):
                    if not done[i]:
                        if t in stops:
                            done[i] = True
                        else:
                            gen[i].append(t)
                if bool(done.all()):
                    break
                mask = torch.cat([mask, torch.ones(n, 1, dtype=mask.dtype)], dim=1)
                last_pos = last_pos + 1
                out = model(input_ids=next_tok[:, None], attention_mask=mask, position_ids=last_pos[:, None],
                            use_cache=True, **{kw: past})
                past = _cache_of(out)
                next_tok = out.logits[:, -1].argmax(-1)
            results.extend(tok.decode(g, skip_special_tokens=True) for g in gen)
    return results


def exact_match(model: Any, tok: Any, examples: Sequence[dict[str, str]], batch_size: int = 64) -> float:
    """Fraction of examples whose greedy completion equals ``output`` (surrounding whitespace ignored)."""
    if not examples:
        return 0.0
    longest = max(len(tok(e["output"], add_special_tokens=False)["input_ids"]) for e in examples)
    preds = greedy_generate(model, tok, [e["input"] for e in examples], longest + 2, batch_size)
    return sum(p.strip() == e["output"].strip() for p, e in zip(preds, examples, strict=True)) / len(examples)


def mean_loss(model: Any, tok: Any, examples: Sequence[dict[str, str]], batch_size: int = 64) -> float:
    """Mean NLL (nats/token) of ``output`` tokens + EOS given ``input``, averaged over all such tokens."""
    import torch

    model.eval()
    total, count = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(examples), batch_size):
            batch = examples[start:start + batch_size]
            input_ids, labels, mask = collate(tok, batch, loss_on_input=False)
            logits = model(input_ids=input_ids, attention_mask=mask).logits[:, :-1].float()
            tgt = labels[:, 1:]
            nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1),
                                                    ignore_index=-100, reduction="sum")
            total += float(nll)
            count += int((tgt != -100).sum())
    return total / max(count, 1)


def collate(tok: Any, batch: Sequence[dict[str, str]], loss_on_input: bool) -> tuple[Any, Any, Any]:
    """Right-padded ``bos + input + output + eos`` with labels (-100 on padding, and on input unless asked);
    no eos for rows with ``"eos": false`` (answers cut off at a length limit, which did not end there)."""
    import torch

    seqs, labs = [], []
    for ex in batch:
        a = tok(ex["input"])["input_ids"]
        b = tok(ex["output"], add_special_tokens=False)["input_ids"]
        b += [tok.eos_token_id] if ex.get("eos", True) is not False else []  # false: a cut-off answer
        seqs.append(a + b)
        labs.append((a if loss_on_input else [-100] * len(a)) + b)
    width = max(len(s) for s in seqs)
    pad = tok.pad_token_id
    ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs], dtype=torch.long)
    labels = torch.tensor([s + [-100] * (width - len(s)) for s in labs], dtype=torch.long)
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], dtype=torch.long)
    return ids, labels, mask


def retrieval_scores(model: Any, examples: Sequence[dict[str, Any]], batch_size: int = 64) -> dict[str, float]:
    """recall@1 and MRR of each query's first ``pos`` among its own ``pos + neg`` (sentence-transformers)."""
    import torch

    texts: list[str] = []
    for ex in examples:
        texts.append(ex["query"])
        texts.extend([ex["pos"][0], *ex["neg"]])
    uniq = sorted(set(texts))
    emb = model.encode(uniq, batch_size=batch_size, convert_to_tensor=True, normalize_embeddings=True,
                       show_progress_bar=False)
    index = {t: i for i, t in enumerate(uniq)}
    r1 = mrr = 0.0
    for ex in examples:
        q = emb[index[ex["query"]]]
        cands = torch.stack([emb[index[t]] for t in [ex["pos"][0], *ex["neg"]]])
        s = cands @ q
        rank = int((s > s[0]).sum()) + 1
        r1 += rank == 1
        mrr += 1.0 / rank
    n = max(len(examples), 1)
    return {"recall@1": r1 / n, "mrr": mrr / n}
