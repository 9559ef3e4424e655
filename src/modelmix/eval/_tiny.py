"""Tiny char-level Llama models for tests and the throughput benchmark (no downloads).

The one factory of small loadable transformers models: the tests (``tests/conftest.py`` writes raw
safetensors checkpoints for the engine; everything that loads a model with transformers builds it here) and
the benchmarks (``benchmarks/bench_eval.py``, ``bench_cocktail.py``) build the same fixtures.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

CHARS = string.digits + string.ascii_letters + " +-*/=?.,:;!'\"()[]\n"


def make_char_tokenizer(chars: str = CHARS) -> Any:
    """A fast char-level tokenizer: ``<pad>``=0, ``<s>``=1, ``</s>``=2, ``<unk>``=3, then one id per char; adds bos."""
    from tokenizers import Tokenizer, decoders, models, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    for c in chars:
        vocab[c] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


def make_tiny_llama(
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    intermediate: int = 128,
    seed: int = 0,
    tie: bool = False,
    *,
    kv_heads: int | None = None,
    init: float | None = None,
    chars: str = CHARS,
    tokenizer: Any = None,
    max_positions: int = 256,
) -> tuple[Any, Any]:
    """A randomly initialised LlamaForCausalLM (float32, eval mode) and its tokenizer: a char tokenizer over
    ``chars`` unless ``tokenizer`` is given. ``init``: the weights' initializer range (transformers' default
    0.02 when None; a larger one makes models that disagree, for weighting tests)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tokenizer if tokenizer is not None else make_char_tokenizer(chars)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads or heads,
        max_position_embeddings=max_positions,
        **({"initializer_range": init} if init is not None else {}),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=tie,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).eval()
    return model, tok


def save_tiny_llama(path: str | Path, **kw: Any) -> Path:
    """Build a tiny Llama and save model + tokenizer to ``path`` (an HF directory)."""
    model, tok = make_tiny_llama(**kw)
    model.save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return Path(path)
