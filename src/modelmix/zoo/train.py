"""Deterministic CPU training loops for the zoo's decoders and embedders.

Determinism: every model's init and data order are derived from the build seed via `torch.manual_seed` /
`random.Random`, torch runs with a fixed thread count and deterministic algorithms, and batches are
built in a single thread - so the same seed on the same machine/torch gives bit-identical weights.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from modelmix.zoo.evaluate import collate


@dataclass(frozen=True)
class Preset:
    """Everything that differs between the fast test zoo and the default zoo."""

    name: str
    d_model: int
    layers: int
    heads: int
    batch: int
    base_steps: int
    expert_steps: int
    lr: float
    expert_lr: float
    sizes: dict[str, int]  # decoder task splits
    general_sizes: dict[str, int]  # held-out general text (validation/test)
    task_cfg: dict[str, int]  # add_digits, max_len
    kb_entities: int
    pretrain_task_frac: float  # share of pretraining lines that are task examples
    pretrain_pool: int  # pretraining only ever sees this many examples per task
    retrieval_sizes: dict[str, int]
    embed_steps: int
    embed_batch: int
    embed_lr: float
    eval_batch: int = 100
    expert_step_scale: dict[str, float] | None = None  # per-task multiplier on expert_steps (harder tasks)
    pretrain_pools: dict[str, int] | None = None  # per-task override of pretrain_pool
    # --- what keeps experts close to the base (mergeable): see `finetune_expert`
    expert_replay: float = 0.0  # replayed pretraining rows per fine-tuning step, as a fraction of `batch`
    expert_anchor: float = 0.0  # decoupled weight decay toward the base weights (instead of toward 0)
    expert_freeze: tuple[str, ...] = ()  # parameter-name substrings kept frozen while fine-tuning
    expert_replay_tasks: float = 0.0  # share of replay rows drawn from the base's pretraining task pools
    pretrain_format_share: float = 1.0  # share of pretraining task rows in the task's format (others: chatty)
    base_sft_steps: int = 0  # mid-training of the base: steps on its task pools, loss on answers (+ replay)
    base_sft_lr: float = 1e-3
    pretrain_task_weights: dict[str, float] | None = None  # relative sampling weight of each task in pretraining
    general_sentences: int = 2  # at most this many sentences per general-text line (1: cheaper steps)

    def steps_for(self, task: str) -> int:
        return int(self.expert_steps * (self.expert_step_scale or {}).get(task, 1.0))

    def pool_for(self, task: str) -> int:
        return (self.pretrain_pools or {}).get(task, self.pretrain_pool)


PRESETS: dict[str, Preset] = {
    "test": Preset(
        name="test", d_model=128, layers=2, heads=4, batch=16, base_steps=350, expert_steps=100,
        lr=3e-3, expert_lr=2e-3,
        sizes={"train": 400, "validation": 40, "test": 40}, general_sizes={"validation": 40, "test": 40},
        task_cfg={"add_digits": 1, "max_len": 3}, kb_entities=8, pretrain_task_frac=0.5, pretrain_pool=400,
        retrieval_sizes={"train": 32, "validation": 16, "test": 24}, embed_steps=2, embed_batch=8,
        embed_lr=5e-5, expert_step_scale={"reverse": 2.0}, expert_replay=0.5, expert_replay_tasks=0.5,
        pretrain_format_share=0.5, pretrain_task_weights={"addition": 2.0, "reverse": 3.0}, base_sft_steps=250,
        base_sft_lr=3e-3, general_sentences=1,
    ),
    "default": Preset(
        name="default", d_model=128, layers=2, heads=4, batch=32, base_steps=1100, expert_steps=150,
        lr=2e-3, expert_lr=1e-3,
        sizes={"train": 2000, "validation": 100, "test": 100}, general_sizes={"validation": 100, "test": 100},
        task_cfg={"add_digits": 2, "max_len": 6}, kb_entities=30, pretrain_task_frac=0.5, pretrain_pool=2000,
        retrieval_sizes={"train": 320, "validation": 50, "test": 100}, embed_steps=16, embed_batch=16,
        embed_lr=5e-5, expert_step_scale={"addition": 2.0, "reverse": 1.5, "sort": 1.3}, expert_replay=0.5,
        expert_replay_tasks=0.5, pretrain_format_share=0.5, pretrain_task_weights={"addition": 4.5, "reverse": 3.0},
        base_sft_steps=1300, base_sft_lr=1e-3,
    ),
}


def setup_torch(threads: int = 1) -> None:
    """A fixed thread count + deterministic kernels: bit-reproducible weights. The tiny zoo uses one thread:
    its matmuls gain little from more, while OpenMP spin-waiting makes 2+ threads catastrophically slow on
    a shared, busy CPU; the 135M-parameter smol zoo uses two (its matmuls are large enough to share)."""
    import torch

    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)


def new_decoder(preset: Preset, vocab_size: int, tok: Any, seed: int) -> Any:
    """A randomly initialised `LlamaForCausalLM` (untied head: merge methods expect `lm_head.weight`)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=vocab_size, hidden_size=preset.d_model, intermediate_size=3 * preset.d_model,
        num_hidden_layers=preset.layers, num_attention_heads=preset.heads, num_key_value_heads=preset.heads,
        max_position_embeddings=256, tie_word_embeddings=False, rms_norm_eps=1e-5,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM._from_config(cfg, attn_implementation="sdpa", dtype=torch.float32)
    model.generation_config.pad_token_id = tok.pad_token_id
    return model


def _lr_at(step: int, total: int, peak: float) -> float:
    warm = max(1, total // 20)
    if step < warm:
        return peak * (step + 1) / warm
    frac = (step - warm) / max(1, total - warm)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def train_decoder(model: Any, tok: Any, batches: Callable[[int], tuple[Sequence[dict[str, str]], bool]],
                  steps: int, lr: float, seed: int, tick: Callable[[], None] | None = None, *,
                  anchor_decay: float = 0.0, freeze: Sequence[str] = (),
                  replay: Callable[[int], Sequence[dict[str, str]]] | None = None,
                  replay_on_input: bool = True) -> None:
    """AdamW with warmup + cosine decay; `batches(step)` returns (examples, loss_on_input).

    Pretraining (the defaults) decays weights toward 0 (AdamW, 0.01). Fine-tuning with `anchor_decay` > 0
    decays them toward their values at the start instead (``w -= lr * anchor_decay * (w - w_start)``, i.e.
    decoupled L2 to the base): since an Adam step moves a weight by at most about `lr`, no weight drifts much
    further than ``1 / anchor_decay`` from the base. Parameters whose name contains a `freeze` substring
    are not trained. `replay(step)` gives extra rows (general text, loss on the whole line) whose mean loss
    is added with weight 1 to the batch's: a separate mean, so long text lines cannot drown a short answer.
    `replay_on_input` False puts the replay loss on the rows' outputs only (self-distillation on chat answers).
    """
    import torch

    torch.manual_seed(seed)
    model.train()
    named = [(n, p) for n, p in model.named_parameters() if not any(f in n for f in freeze)]
    params = [p for _, p in named]
    frozen = [p for n, p in model.named_parameters() if any(f in n for f in freeze)]
    for p in frozen:  # no gradient at all (not just no update): saves the time and memory of computing it
        p.requires_grad_(False)
    start = [p.detach().clone() for p in params] if anchor_decay > 0 else []
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.98), weight_decay=0.0 if anchor_decay > 0 else 0.01)
    for step in range(steps):
        step_lr = _lr_at(step, steps, lr)
        for g in opt.param_groups:
            g["lr"] = step_lr
        examples, on_input = batches(step)
        ids, labels, mask = collate(tok, examples, loss_on_input=on_input)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        if replay is not None:
            rids, rlabels, rmask = collate(tok, replay(step), loss_on_input=replay_on_input)
            loss = loss + model(input_ids=rids, attention_mask=rmask, labels=rlabels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if start:
            with torch.no_grad():
                for p, p0 in zip(params, start, strict=True):
                    p.sub_(step_lr * anchor_decay * (p - p0))
        if tick is not None:
            tick()
    for p in frozen:
        p.requires_grad_(True)
    model.eval()


def pretrain_batches(preset: Preset, seed: int, general: Callable[[random.Random], str],
                     pools: dict[str, list[dict[str, str]]]) -> Callable[[int], tuple[list[dict[str, str]], bool]]:
    """General text, plus a `pretrain_task_frac` share of examples drawn from the per-task pools (task chosen
    by `pretrain_task_weights`, uniformly without them)."""
    rng = random.Random(f"pretrain-{seed}")
    names = sorted(pools)
    w = [(preset.pretrain_task_weights or {}).get(n, 1.0) for n in names]

    def batch(step: int) -> tuple[list[dict[str, str]], bool]:
        rows = []
        for _ in range(preset.batch):
            if rng.random() < preset.pretrain_task_frac:
                name = rng.choices(names, w)[0] if preset.pretrain_task_weights else rng.choice(names)
                rows.append(rng.choice(pools[name]))
            else:
                rows.append({"input": general(rng), "output": ""})
        return rows, True

    return batch


def task_batches(preset: Preset, seed: int, train: list[dict[str, str]]
                 ) -> Callable[[int], tuple[list[dict[str, str]], bool]]:
    """Uniform sampling from one task's train split; loss on the answer only (SFT style)."""
    rng = random.Random(f"finetune-{seed}")

    def batch(step: int) -> tuple[list[dict[str, str]], bool]:
        return [rng.choice(train) for _ in range(preset.batch)], False

    return batch


def mixed_task_batches(preset: Preset, seed: int, pools: dict[str, list[dict[str, str]]]
                       ) -> Callable[[int], tuple[list[dict[str, str]], bool]]:
    """Rows from every task pool (weighted by `pretrain_task_weights`), loss on the answer only: the base's
    mid-training, which teaches the skills in the same mixed forms pretraining used."""
    rng = random.Random(f"mixed-{seed}")
    names = sorted(pools)
    w = [(preset.pretrain_task_weights or {}).get(n, 1.0) for n in names]

    def batch(step: int) -> tuple[list[dict[str, str]], bool]:
        return [rng.choice(pools[rng.choices(names, w)[0]]) for _ in range(preset.batch)], False

    return batch


def replay_batches(preset: Preset, seed: int, general: Callable[[random.Random], str],
                   pools: dict[str, list[dict[str, str]]] | None = None
                   ) -> Callable[[int], list[dict[str, str]]] | None:
    """`expert_replay * batch` replayed pretraining rows per step, or None when `expert_replay` is 0: general
    text, and with `expert_replay_tasks` > 0 that share of rows from the base's own pretraining task pools
    (what the base saw, as real fine-tunes replay pretraining data), loss on the whole line."""
    n = round(preset.expert_replay * preset.batch)
    if n <= 0:
        return None
    rng = random.Random(f"replay-{seed}")
    names = sorted(pools or {})

    def batch(step: int) -> list[dict[str, str]]:
        rows = []
        for _ in range(n):
            if names and preset.expert_replay_tasks > 0 and rng.random() < preset.expert_replay_tasks:
                ex = rng.choice(pools[rng.choice(names)])  # type: ignore[index]
                rows.append({"input": ex["input"], "output": ex["output"]})
            else:
                rows.append({"input": general(rng), "output": ""})
        return rows

    return batch


def finetune_embedder(model: Any, train: list[dict[str, Any]], preset: Preset, seed: int,
                      tick: Callable[[], None] | None = None) -> None:
    """A few steps of in-batch-negatives contrastive training (MultipleNegativesRankingLoss with one hard
    negative per query, scale 20), written out by hand so it is deterministic and cheap. Word embeddings
    are frozen: they hold most parameters and barely matter for a few steps."""
    import torch

    torch.manual_seed(seed)
    rng = random.Random(f"embed-{seed}")
    for name, p in model.named_parameters():
        p.requires_grad_("word_embeddings" not in name)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=preset.embed_lr, weight_decay=0.0)
    prep = getattr(model, "preprocess", None) or model.tokenize  # `tokenize` before sentence-transformers 5
    model.train()
    for _ in range(preset.embed_steps):
        rows = rng.sample(train, min(preset.embed_batch, len(train)))
        q = model(prep([r["query"] for r in rows]))["sentence_embedding"]
        docs = [r["pos"][0] for r in rows] + [rng.choice(r["neg"]) for r in rows]
        d = model(prep(docs))["sentence_embedding"]
        q = torch.nn.functional.normalize(q, dim=-1)
        d = torch.nn.functional.normalize(d, dim=-1)
        loss = torch.nn.functional.cross_entropy(20.0 * q @ d.T, torch.arange(len(rows)))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if tick is not None:
            tick()
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()
