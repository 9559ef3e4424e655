#!/usr/bin/env python3
"""Generate synthetic Llama-shaped checkpoints (``base``, ``ft1``, ``ft2``) for the merge benchmark.

Each model is a directory with a ``config.json`` (LlamaForCausalLM), bf16 weights as sharded
safetensors plus ``model.safetensors.index.json``, and a minimal WordLevel tokenizer
(``tokenizer.json`` + ``tokenizer_config.json``) so that mergekit's tokenizer copy works offline.

``ft1``/``ft2`` are ``base`` plus small seeded Gaussian deltas (~1e-3 for matrices, i.e. ~5% of the
weight scale), so task vectors, sign election and trimming behave like a real fine-tune.

Tensors are generated and streamed to disk one at a time (the safetensors header is written first,
from the precomputed layout), so peak memory is a single fp32 tensor (the embedding) regardless of
model size. Output is deterministic: every tensor is drawn from a generator seeded by
``(seed, model, tensor name)``. Existing complete checkpoints are left alone.

Usage: make_checkpoints.py --out DIR [--size 1.1b|0.3b|tiny] [--seed 0] [--shard-mb 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch

MODELS = ("base", "ft1", "ft2")
DONE_MARKER = ".complete"


@dataclass(frozen=True)
class Shape:
    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    max_pos: int = 2048

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


SHAPES: dict[str, Shape] = {
    # TinyLlama-1.1B
    "1.1b": Shape(vocab=32000, hidden=2048, intermediate=5632, layers=22, heads=32, kv_heads=4),
    # ~0.34B params, same family proportions
    "0.3b": Shape(vocab=32000, hidden=1024, intermediate=2816, layers=24, heads=16, kv_heads=4),
    # smoke tests: ~0.2M params
    "tiny": Shape(vocab=512, hidden=64, intermediate=176, layers=2, heads=4, kv_heads=2, max_pos=256),
}

# default shard sizes (bytes); tiny is sharded too so the index path is exercised
DEFAULT_SHARD_BYTES = {"1.1b": 2_000_000_000, "0.3b": 2_000_000_000, "tiny": 200_000}


def tensor_layout(s: Shape) -> list[tuple[str, tuple[int, ...]]]:
    """Tensor names and shapes in HF Llama order."""
    kv = s.kv_heads * s.head_dim
    out: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (s.vocab, s.hidden))]
    for i in range(s.layers):
        p = f"model.layers.{i}"
        out += [
            (f"{p}.self_attn.q_proj.weight", (s.hidden, s.hidden)),
            (f"{p}.self_attn.k_proj.weight", (kv, s.hidden)),
            (f"{p}.self_attn.v_proj.weight", (kv, s.hidden)),
            (f"{p}.self_attn.o_proj.weight", (s.hidden, s.hidden)),
            (f"{p}.mlp.gate_proj.weight", (s.intermediate, s.hidden)),
            (f"{p}.mlp.up_proj.weight", (s.intermediate, s.hidden)),
            (f"{p}.mlp.down_proj.weight", (s.hidden, s.intermediate)),
            (f"{p}.input_layernorm.weight", (s.hidden,)),
            (f"{p}.post_attention_layernorm.weight", (s.hidden,)),
        ]
    out += [("model.norm.weight", (s.hidden,)), ("lm_head.weight", (s.vocab, s.hidden))]
    return out


def numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def plan_shards(
    layout: list[tuple[str, tuple[int, ...]]], shard_bytes: int
) -> list[list[tuple[str, tuple[int, ...]]]]:
    shards: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, shape in layout:
        nbytes = numel(shape) * 2
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += nbytes
    return shards


def shard_header(tensors: list[tuple[str, tuple[int, ...]]]) -> bytes:
    meta: dict[str, object] = {"__metadata__": {"format": "pt"}}
    off = 0
    for name, shape in tensors:
        n = numel(shape) * 2
        meta[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    raw = json.dumps(meta, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # 8-byte alignment of the data section
    return struct.pack("<Q", len(raw)) + raw


def _gen(seed: int, model: str, name: str) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + zlib.crc32(f"{model}:{name}".encode())) & 0x7FFF_FFFF_FFFF_FFFF)
    return g


def make_tensors(name: str, shape: tuple[int, ...], seed: int) -> dict[str, torch.Tensor]:
    """fp32 -> bf16 weights for base/ft1/ft2 of one tensor."""
    is_norm = len(shape) == 1
    base = torch.randn(shape, generator=_gen(seed, "base", name), dtype=torch.float32)
    if is_norm:
        base.mul_(0.05).add_(1.0)
        delta_std = 1e-2  # bf16 ulp at 1.0 is 7.8e-3; smaller deltas would round away
    else:
        base.mul_(0.02)
        delta_std = 1e-3
    out = {"base": base.to(torch.bfloat16)}
    for m in ("ft1", "ft2"):
        d = torch.randn(shape, generator=_gen(seed, m, name), dtype=torch.float32)
        d.mul_(delta_std).add_(base)
        out[m] = d.to(torch.bfloat16)
    return out


def tokenizer_files(vocab: int) -> dict[str, object]:
    specials = ["<unk>", "<s>", "</s>"]
    vocab_map = {t: i for i, t in enumerate(specials)}
    for i in range(len(specials), vocab):
        vocab_map[f"tok{i}"] = i
    tok = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": i,
                "content": t,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
            for i, t in enumerate(specials)
        ],
        "normalizer": None,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": None,
        "decoder": None,
        "model": {"type": "WordLevel", "vocab": vocab_map, "unk_token": "<unk>"},
    }
    tok_cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "model_max_length": 2048,
        "clean_up_tokenization_spaces": False,
    }
    special_map = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    return {"tokenizer.json": tok, "tokenizer_config.json": tok_cfg, "special_tokens_map.json": special_map}


def model_config(s: Shape) -> dict[str, object]:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": s.vocab,
        "hidden_size": s.hidden,
        "intermediate_size": s.intermediate,
        "num_hidden_layers": s.layers,
        "num_attention_heads": s.heads,
        "num_key_value_heads": s.kv_heads,
        "head_dim": s.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": s.max_pos,
        "initializer_range": 0.02,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "use_cache": True,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.45.0",
    }


def is_complete(out: Path) -> bool:
    return all((out / m / DONE_MARKER).exists() for m in MODELS)


def generate(
    out: Path, size: str, seed: int = 0, shard_bytes: int | None = None, quiet: bool = False
) -> None:
    shape = SHAPES[size]
    if is_complete(out):
        if not quiet:
            print(f"[make_checkpoints] {out}: complete, skipping")
        return
    layout = tensor_layout(shape)
    shards = plan_shards(layout, shard_bytes or DEFAULT_SHARD_BYTES[size])
    n = len(shards)
    fnames = [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    total_bytes = sum(numel(sh) * 2 for _, sh in layout)
    t0 = time.perf_counter()
    for m in MODELS:
        d = out / m
        d.mkdir(parents=True, exist_ok=True)
        (d / DONE_MARKER).unlink(missing_ok=True)
        for stale in d.glob("*.safetensors"):
            if stale.name not in fnames:
                stale.unlink()
        (d / "config.json").write_text(json.dumps(model_config(shape), indent=2) + "\n")
        (d / "generation_config.json").write_text(
            json.dumps({"bos_token_id": 1, "eos_token_id": 2, "_from_model_config": True}, indent=2) + "\n"
        )
        for fname, obj in tokenizer_files(shape.vocab).items():
            (d / fname).write_text(json.dumps(obj, ensure_ascii=False) + "\n")
        weight_map = {name: fnames[i] for i, sh in enumerate(shards) for name, _ in sh}
        index = {"metadata": {"total_size": total_bytes}, "weight_map": weight_map}
        (d / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")

    done = 0
    for i, tensors in enumerate(shards):
        files = {m: open(out / m / fnames[i], "wb") for m in MODELS}
        try:
            hdr = shard_header(tensors)
            for f in files.values():
                f.write(hdr)
            for name, sh in tensors:
                ts = make_tensors(name, sh, seed)
                for m in MODELS:
                    files[m].write(ts[m].contiguous().view(torch.int16).numpy().tobytes())
                del ts
                done += numel(sh) * 2
                if not quiet and name.endswith("down_proj.weight"):
                    print(
                        f"\r[make_checkpoints] {size}: {done / total_bytes:6.1%} "
                        f"({time.perf_counter() - t0:.0f}s)",
                        end="",
                        file=sys.stderr,
                        flush=True,
                    )
        finally:
            for f in files.values():
                f.close()
    for m in MODELS:
        (out / m / DONE_MARKER).write_text(f"size={size} seed={seed}\n")
    if not quiet:
        print(
            f"\n[make_checkpoints] wrote {len(MODELS)} x {total_bytes / 1e9:.2f} GB ({n} shard(s) each) "
            f"to {out} in {time.perf_counter() - t0:.1f}s",
            file=sys.stderr,
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path, help="output dir (gets base/, ft1/, ft2/)")
    ap.add_argument("--size", default="1.1b", choices=sorted(SHAPES))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--shard-mb", type=float, default=None, help="shard size in MB (default ~2000; tiny: 0.2)"
    )
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    shard_bytes = int(a.shard_mb * 1e6) if a.shard_mb else None
    generate(a.out.resolve(), a.size, seed=a.seed, shard_bytes=shard_bytes, quiet=a.quiet)
    return 0


if __name__ == "__main__":
    sys.exit(main())
