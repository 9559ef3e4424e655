"""Can these checkpoints be combined weight by weight? The one architecture check.

Soups, LM-Cocktail, LMC, the analysis and the candidate API all combine whole models tensor by tensor, so
they need the same answer to one question, from headers and JSON only (well under a second, before any
weight is read): same config architecture, the same floating-point tensor names and shapes, and the same
tokenizer vocabulary (same-shaped embeddings can still index different tokens). Integer buffers
(``position_ids``...) are not weights: some savers drop them and transformers rebuilds them, so one model
having them and another not is no architecture difference. The engine's planner is more lenient on purpose
(mergekit merges over a few missing tensors) and keeps its own rule.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from modelmix.errors import InputError

if TYPE_CHECKING:
    from modelmix.io.checkpoint import Checkpoint

#: config keys that must agree (when both models state them): a model type, its class, its size
CONFIG_KEYS = ("model_type", "architectures", "vocab_size", "hidden_size", "num_hidden_layers")
_VOCAB_TENSORS = ("embed", "lm_head", "wte", "word_embeddings")


def weight_names(ck: Checkpoint) -> list[str]:
    """The floating-point tensors of a checkpoint, in checkpoint order."""
    return [n for n in ck.names() if ck.entry(n).dtype.is_floating_point]


def check_compatible(ref: Checkpoint, others: Sequence[Checkpoint], *, ref_label: str = "",
                     purpose: str = "Combining weights") -> list[str]:
    """Weight names shared by all (``ref``'s order); InputError naming the first difference otherwise.

    ``ref_label`` describes ``ref`` in messages ("the base"); ``purpose`` says why it matters.
    """
    label = f"{ref_label} {ref.ref}" if ref_label else ref.ref
    names = weight_names(ref)
    ref_set = set(names)
    ref_cfg = ref.config()
    for m in others:
        other = set(weight_names(m))
        missing, extra = sorted(ref_set - other), sorted(other - ref_set)
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing {len(missing)} of its tensors (e.g. {missing[:3]})")
            if extra:
                parts.append(f"has {len(extra)} tensors it lacks (e.g. {extra[:3]})")
            raise InputError(
                f"Model {m.ref} is not the same architecture as {label}: they have different tensors ("
                + " and ".join(parts) + f"). {purpose} needs identical tensor names."
            )
        for n in names:
            rs, ms = tuple(ref.entry(n).shape), tuple(m.entry(n).shape)
            if rs != ms:
                vocab = any(w in n for w in _VOCAB_TENSORS) and len(rs) == len(ms) and rs[1:] == ms[1:]
                what = "a different vocabulary" if vocab else "a different architecture"
                raise InputError(
                    f"Models {label} and {m.ref} are incompatible: {m.ref} has {what} than {label}: tensor "
                    f"{n!r} has shape {list(ms)} vs {list(rs)}. {purpose} needs identical shapes"
                    + (" (align the vocabularies first, e.g. merge with tokenizer_source)." if vocab else ".")
                )
        cfg = m.config()
        for key in CONFIG_KEYS:
            if key in cfg and key in ref_cfg and cfg[key] != ref_cfg[key]:
                raise InputError(
                    f"Models {label} and {m.ref} are incompatible: they have different architectures "
                    f"(config {key} is {ref_cfg[key]!r} vs {cfg[key]!r}). {purpose} needs models "
                    "fine-tuned from one architecture."
                )
        _check_vocab(ref, m, label)
    return names


def _vocab(ck: Checkpoint) -> Any:
    """The tokenizer's vocabulary as stored on disk (None when the directory has none)."""
    d = ck.model_dir
    f = d / "tokenizer.json"
    if f.is_file():
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
        except (ValueError, OSError) as e:
            raise InputError(f"Cannot read {f}: {e}.") from None
        v = (data.get("model") or {}).get("vocab")
        added = sorted((t.get("id"), t.get("content")) for t in data.get("added_tokens") or [])
        # compared as parsed (a dict compares in milliseconds; re-serialising a 30k vocabulary cost 0.15 s)
        return (v, added) if v is not None else None
    for name in ("vocab.txt", "vocab.json", "tokenizer.model"):
        if (d / name).is_file():
            return (d / name).read_bytes()
    return None


def _check_vocab(ref: Checkpoint, m: Checkpoint, label: str) -> None:
    fr, fm = ref.model_dir / "tokenizer.json", m.model_dir / "tokenizer.json"
    if fr.is_file() and fm.is_file() and fr.read_bytes() == fm.read_bytes():
        return  # the usual case (copies of one tokenizer): equal bytes, nothing to parse (30 ms for 30k tokens)
    vr, vm = _vocab(ref), _vocab(m)
    if vr is not None and vm is not None and vr != vm:
        raise InputError(
            f"Model {m.ref} uses a different tokenizer vocabulary than {label}; averaging or comparing their "
            "embeddings would mix unrelated tokens (different vocabularies). Combine only models fine-tuned "
            "from the same base with the same tokenizer."
        )
