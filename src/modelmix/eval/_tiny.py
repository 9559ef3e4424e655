"""Tiny char-level Llama models for tests and the throughput benchmark (no downloads).

Kept in the package (not tests/) so the benchmark (``python -m modelmix.eval.bench``) and other modules'
tests can build the same fixtures.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

CHARS = string.digits + string.ascii_letters + " +-*/=?.,:;!'\"()[]\n"


def make_char_tokenizer() -> Any:
    """A fast char-level tokenizer: ``<pad>``=0, ``<s>``=1, ``</s>``=2, ``<unk>``=3, then one id per char; adds bos."""
    from tokenizers import Tokenizer, decoders, models, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    for c in CHARS:
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
) -> tuple[Any, Any]:
    """A randomly initialised LlamaForCausalLM (float32, eval mode) and its char tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = make_char_tokenizer()
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=256,
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
