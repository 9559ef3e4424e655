"""The zoo's shared character-level tokenizer.

Char-level because the tasks are digit/letter manipulations: one token per character keeps addition,
reversal and sorting learnable by tiny models, and ``tok(a + b) == tok(a) + tok(b)`` (no merge effects
at the input/output boundary), which simplifies loss masking and evaluation.
"""

from __future__ import annotations

import string
from typing import Any

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)
# Printable ASCII (space .. ~) plus newline: every character the task generators can emit.
CHARS = "\n" + "".join(chr(c) for c in range(32, 127))
assert set(string.ascii_letters + string.digits) <= set(CHARS)


def build_tokenizer() -> Any:
    """A `PreTrainedTokenizerFast` (pad=0, bos=1, eos=2, unk=3, then one id per character).

    BOS is prepended by the post-processor, like Llama tokenizers, so ``tok(text)`` gives exactly what
    the models were trained on; EOS is appended by the training code only after the answer.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS)}
    for ch in CHARS:
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK,
        padding_side="left", model_max_length=256, clean_up_tokenization_spaces=False,
    )

