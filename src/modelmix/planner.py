"""Recipe -> merge plan: every output tensor with its sources, method, resolved parameters and seed.

Planning reads only checkpoint headers, so every structural problem (missing tensors, shape or vocabulary
mismatches, bad parameters) is reported before any weight is read. The plan is architecture-agnostic: the
layer index comes from the tensor name (``layers.N.``, ``h.N.``, ``layer.N.``, ``blocks.N.``) and the layer
count from the names (and the config key that holds it is updated for layer-stacking merges).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from modelmix.config import MergeConfig, ModelRef, layer_t, parse_dtype
from modelmix.errors import ConfigError, InputError
from modelmix.io.checkpoint import Checkpoint, resolve_model_path
from modelmix.methods.registry import Method, get_method

#: layers [start, end) of one input model
LayerRange = tuple[int, int]

LAYER_RE = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)\.")
LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
_PRE_WORDS = ("embed", "wte", "wpe", "word_embeddings", "position_embeddings", "token_type")
_VOCAB_WORDS = ("embed_tokens", "wte", "word_embeddings", "lm_head", "embed_out", "output.weight")


def layer_index(name: str) -> int | None:
    m = LAYER_RE.search(name)
    return int(m.group(1)) if m else None


def layer_of(name: str) -> tuple[str, int] | None:
    """(the layer stack's prefix, the layer index) of a layer tensor: ``model.layers.3.mlp.w`` ->
    ``("model.layers", 3)``; None for a tensor outside the layers."""
    m = LAYER_RE.search(name)
    return (name[: m.start(1) - 1], int(m.group(1))) if m else None


def with_layer(name: str, index: int) -> str:
    m = LAYER_RE.search(name)
    assert m is not None
    return name[: m.start(1)] + str(index) + name[m.end(1) :]


def is_pre_weight(name: str) -> bool:
    """Non-layer tensors before the layers (embeddings) vs after them (final norm, lm_head)."""
    return any(w in name for w in _PRE_WORDS)


def is_vocab_tensor(name: str) -> bool:
    return any(w in name for w in _VOCAB_WORDS)


def count_layers(names: list[str]) -> int:
    idx = [i for n in names if (i := layer_index(n)) is not None]
    return max(idx) + 1 if idx else 0


@dataclass
class Source:
    model: str  # key into MergePlan.models
    name: str


@dataclass
class TensorTask:
    """One output tensor: ``method.fn(tensors=[sources...], base=base, **params)``."""

    name: str
    shape: tuple[int, ...]
    out_dtype: torch.dtype
    method: Method | None  # None: copied unchanged from sources[0] (integer buffers)
    sources: list[Source]
    base: Source | None = None
    global_params: dict[str, Any] = field(default_factory=dict)
    model_params: dict[str, list[Any]] = field(default_factory=dict)
    seed: int | None = None
    vocab_maps: dict[str, Any] | None = None  # model key -> row permutation (tokenizer_source alignment)

    def describe(self) -> str:
        src = ", ".join(f"{s.model}:{s.name}" for s in self.sources)
        base = f" base={self.base.model}" if self.base else ""
        params = {**self.global_params, **self.model_params}
        mname = self.method.name if self.method else "copy"
        return f"{self.name} {list(self.shape)} {str(self.out_dtype).removeprefix('torch.')} <- {mname}({src}){base} {params}"


@dataclass
class MergePlan:
    config: MergeConfig
    models: dict[str, Checkpoint]
    tasks: list[TensorTask]
    out_config: dict[str, Any]
    tokenizer_dir: Path | None
    method: Method
    notes: list[str] = field(default_factory=list)  # non-fatal observations shown to the user

    @property
    def out_bytes(self) -> int:
        import math

        from modelmix.io.safetensors_file import itemsize

        return sum(math.prod(t.shape) * itemsize(t.out_dtype) for t in self.tasks)

    def close(self) -> None:
        for m in self.models.values():
            m.close()


@dataclass(frozen=True)
class _Slice:
    """One output slice to plan: a recipe slice, or in models mode the one implicit slice of whole models."""

    index: int | None  # the slice's index in the recipe; None in models mode
    base: ModelRef | None  # the group's base model (the slice's own or the global one), as the config says
    sources: tuple[tuple[ModelRef, LayerRange], ...]  # the inputs, in the config's order


def tensor_seed(random_seed: int, name: str) -> int:
    """A per-tensor seed: same recipe seed -> same masks, independent of order, threads or chunking."""
    h = hashlib.sha256(f"{random_seed}:{name}".encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def _key(ref: ModelRef) -> str:
    return str(ref)


def open_models(config: MergeConfig, *, base_dir: Path | None, allow_pickle: bool) -> dict[str, Checkpoint]:
    models: dict[str, Checkpoint] = {}
    for ref in config.referenced_models():
        models[_key(ref)] = Checkpoint(
            ref.path, base_dir=ref.base_dir or base_dir, allow_pickle=allow_pickle, lora=ref.lora
        )
    return models


def build_plan(
    config: MergeConfig,
    *,
    base_dir: Path | None = None,
    allow_pickle: bool = False,
    seed: int | None = None,
) -> MergePlan:
    method = config.method()
    models = open_models(config, base_dir=base_dir, allow_pickle=allow_pickle)
    try:
        return _Planner(config, method, models, seed).plan()
    except BaseException:
        for m in models.values():
            m.close()
        raise


class _Planner:
    def __init__(self, config: MergeConfig, method: Method, models: dict[str, Checkpoint], seed: int | None):
        self.config = config
        self.method = method
        self.models = models
        self.seed = seed if seed is not None else (config.random_seed if config.random_seed is not None else 0)
        self.base_key = _key(config.base_model) if config.base_model is not None else None
        compute = parse_dtype(config.dtype) if config.dtype else None
        self.out_dtype_cfg = parse_dtype(config.out_dtype) if config.out_dtype else compute
        self.tasks: list[TensorTask] = []
        self.notes: list[str] = []
        self.vocab: _VocabAligner | None = None

    # ------------------------------------------------------------------ entry
    def plan(self) -> MergePlan:
        cfg = self.config
        slices = self._slices()
        self.vocab = _VocabAligner.maybe(self.config, self.models, self.base_key, self.tokenizer_dir())
        # pre-layer weights from the first slice's models, post-layer from the last's (as mergekit); names are
        # the union over those models, so a tensor missing from one of them is still merged over the others
        for name in self._union(slices[0].sources, None):
            if is_pre_weight(name):
                self._plan_tensor(name, name, slices[0], t=0.0)
        out_layer = 0
        for sl in slices:
            out_layer = self._plan_slice(sl, out_layer)
        for name in self._union(slices[-1].sources, None):
            if not is_pre_weight(name):
                self._plan_tensor(name, name, slices[-1], t=0.0)
        return MergePlan(cfg, self.models, self.tasks, self._out_config(out_layer), self.tokenizer_dir(), self.method,
                         self.notes)

    def _slices(self) -> list[_Slice]:
        """The slices to plan, with the inputs and base the config gives each (`MergeConfig.input_models`,
        ``slice_base``): the recipe's slices, or in models mode the whole models with their full layer ranges."""
        cfg = self.config
        if cfg.slices:
            return [
                _Slice(i, cfg.slice_base(i), tuple((src.model, tuple(src.layer_range)) for src in s.sources))
                for i, s in enumerate(cfg.slices)
            ]
        full = tuple((r, (0, count_layers(self.models[_key(r)].names()))) for r in cfg.input_models())
        return [_Slice(None, cfg.slice_base(None), full)]

    def _plan_slice(self, sl: _Slice, out_layer: int) -> int:
        index, sources = sl.index, sl.sources
        lengths = {b - a for _, (a, b) in sources}
        if len(lengths) != 1:
            where = f"slices[{index}]" if index is not None else "models"
            raise ConfigError(
                f"All sources of {where} must span the same number of layers, got "
                + ", ".join(f"{r} {list(rng)}" for r, rng in sources)
                + "."
            )
        n = lengths.pop()
        for ref, (a, b) in sources:
            have = count_layers(self.models[_key(ref)].names())
            if b > have or a < 0:
                raise ConfigError(f"layer_range {[a, b]} of {ref} is out of bounds: that model has {have} layers.")
        for j in range(n):
            t = layer_t(j, n)
            for tmpl in self._union(sources, j):  # names with layer index 0, e.g. model.layers.0.mlp.up_proj.weight
                out_name = with_layer(tmpl, out_layer + j)
                per_source = [(ref, with_layer(tmpl, a + j)) for ref, (a, _b) in sources]
                self._plan_tensor(out_name, per_source, sl, t=t)
        return out_layer + n

    def _union(self, sources: tuple[tuple[ModelRef, LayerRange], ...], j: int | None) -> list[str]:
        """Tensor names over all sources, first source's order first: non-layer names (j None), or the
        names of each source's layer ``start + j`` as templates with layer index 0."""
        seen: dict[str, None] = {}
        for ref, (a, _b) in sources:
            for nm in self.models[_key(ref)].names():
                li = layer_index(nm)
                if j is None and li is None:
                    seen.setdefault(nm, None)
                elif j is not None and li == a + j:
                    seen.setdefault(with_layer(nm, 0), None)
        return list(seen)

    # ------------------------------------------------------------------ one tensor
    def _plan_tensor(self, out_name: str, in_names: str | list, sl: _Slice, *, t: float) -> None:
        slice_index, base_ref = sl.index, sl.base
        if isinstance(in_names, str):
            in_names = [(ref, in_names) for ref, _ in sl.sources]
        base_key = _key(base_ref) if base_ref is not None else None
        # -- existence and shapes
        present = []
        missing = []
        for ref, nm in in_names:
            ck = self.models[_key(ref)]
            if nm not in ck:
                nm = _tied_alias(ck, nm)  # type: ignore[assignment]
                if nm is None:
                    missing.append(ref)
                    continue
            present.append((ref, nm))
        if missing:
            self._check_same_architecture(missing, [r for r, _ in present])
            self.notes.append(
                f"{out_name}: missing from {', '.join(map(str, missing))}; merged over the models that have it"
            )
            if self.method.needs_base and base_ref is not None and base_ref in missing:
                present = present[:1]  # no base to take task vectors against: keep the first model's tensor
                self.notes[-1] = f"{out_name}: missing from the base model; copied from {present[0][0]}"
                r0, n0 = present[0]
                e0 = self.models[_key(r0)].entry(n0)
                copy = get_method("passthrough")
                self.tasks.append(TensorTask(out_name, e0.shape, self.out_dtype_cfg or e0.dtype, copy,
                                             [Source(_key(r0), n0)], model_params={"scale": [None]}))
                return
        entries = [self.models[_key(r)].entry(nm) for r, nm in present]
        shapes = {e.shape for e in entries}
        vocab_maps = None
        if len(shapes) > 1:
            if self.vocab is not None and is_vocab_tensor(out_name):
                vocab_maps = self.vocab.maps
                shape = (self.vocab.size, *entries[0].shape[1:])
            else:
                listing = "; ".join(f"{r}: {list(e.shape)}" for (r, _), e in zip(present, entries, strict=True))
                hint = (
                    " The vocabularies differ: set tokenizer_source (e.g. `tokenizer_source: base`) to choose whose "
                    "vocabulary to keep; embedding rows are then aligned by token."
                    if is_vocab_tensor(out_name) and len({e.shape[1:] for e in entries}) == 1
                    else ""
                )
                raise InputError(f"Shape mismatch for tensor {out_name!r}: {listing}.{hint}")
        elif self.vocab is not None and is_vocab_tensor(out_name) and self.vocab.needed:
            vocab_maps = self.vocab.maps
            shape = (self.vocab.size, *entries[0].shape[1:])
        else:
            shape = entries[0].shape
        dtype0 = entries[0].dtype
        if not dtype0.is_floating_point:
            # integer buffers (position ids, ...) are copied from the first source unchanged
            self.tasks.append(TensorTask(out_name, shape, dtype0, None, [Source(_key(present[0][0]), present[0][1])]))
            return
        out_dtype = self.out_dtype_cfg or dtype0
        m = self.method
        base: Source | None = None
        inputs: list[tuple[ModelRef, str]] = []
        for ref, nm in present:
            if m.uses_base and base_key is not None and _key(ref) == base_key:
                base = Source(_key(ref), nm)
            else:
                inputs.append((ref, nm))
        if m.needs_base and base is None:
            raise ConfigError(f'Merge method "{m.name}" needs a base_model, and none is given for tensor {out_name!r}.')
        if len(inputs) < m.min_models:
            raise ConfigError(
                f'Merge method "{m.name}" needs at least {m.min_models} model(s) besides the base; got {len(inputs)}.'
            )
        if m.max_models is not None and len(inputs) > m.max_models:
            raise ConfigError(
                f'Merge method "{m.name}" takes at most {m.max_models} model(s) besides the base; got {len(inputs)} '
                f"({', '.join(str(r) for r, _ in inputs)})."
            )
        gparams: dict[str, Any] = {}
        mparams: dict[str, list[Any]] = {}
        for p in m.params:  # recipe value at this tensor/layer/model, else the method's default
            if p.scope == "global":
                gparams[p.name] = self.config.get_param(p.name, tensor_name=out_name, t=t, slice_index=slice_index)
            else:
                mparams[p.name] = [
                    self.config.get_param(p.name, tensor_name=out_name, t=t, model=ref, slice_index=slice_index)
                    for ref, _nm in inputs
                ]
        if m.check is not None:  # constraints between parameters: reported by `check`, before any weight is read
            try:
                m.check({**gparams, **mparams})
            except ConfigError as e:
                raise ConfigError(f"Tensor {out_name!r}: {e}") from None
        self.tasks.append(
            TensorTask(
                name=out_name,
                shape=tuple(shape),
                out_dtype=out_dtype,
                method=m,
                sources=[Source(_key(r), nm) for r, nm in inputs],
                base=base,
                global_params=gparams,
                model_params=mparams,
                seed=tensor_seed(self.seed, out_name) if m.random else None,
                vocab_maps=vocab_maps,
            )
        )

    def _check_same_architecture(self, missing: list, present: list) -> None:
        """A few tensors absent from a model is tolerated (merged over the others); a different tensor
        layout is not: that is two architectures, which cannot be merged."""
        ref_names = set(self.models[_key(present[0])].names()) if present else set()
        for ref in missing:
            have = set(self.models[_key(ref)].names())
            gone = ref_names - have
            if len(gone) > max(2, len(ref_names) // 20):
                example = sorted(gone)[:3]
                raise InputError(
                    f"Model {ref} does not have the same tensors as {present[0]}: {len(gone)} of "
                    f"{len(ref_names)} tensor names are missing from it (e.g. {', '.join(map(repr, example))}), "
                    f"so the tensor names do not match; are they the same architecture?"
                )

    # ------------------------------------------------------------------ outputs
    def tokenizer_dir(self) -> Path | None:
        """Where tokenizer files come from: tokenizer_source, else the base (or first) model."""
        ref = self.config.tokenizer_model() or self.config.base_model or self.config.referenced_models()[0]
        if _key(ref) in self.models:
            return self.models[_key(ref)].model_dir
        p = resolve_model_path(ref.path, base_dir=ref.base_dir)
        return p if p.is_dir() else p.parent

    def _out_config(self, num_layers: int) -> dict[str, Any]:
        ref = self.config.base_model or self.config.referenced_models()[0]
        out = dict(self.models[_key(ref)].config())
        if self.config.slices and out:
            for k in LAYER_COUNT_KEYS:
                if k in out:
                    out[k] = num_layers
        dtypes = {t.out_dtype for t in self.tasks if t.out_dtype.is_floating_point}
        if out and len(dtypes) == 1:
            name = str(dtypes.pop()).removeprefix("torch.")
            out["torch_dtype" if "torch_dtype" in out else "dtype"] = name
        if self.vocab is not None and self.vocab.needed and out:
            for k in ("vocab_size", "n_vocab"):
                if k in out:
                    out[k] = self.vocab.size
        return out


def _tied_alias(ck: Checkpoint, name: str) -> str | None:
    """lm_head missing in a model with tied embeddings: use its input embedding (as transformers does)."""
    if name.endswith("lm_head.weight") and ck.config().get("tie_word_embeddings", True):
        for cand in ("model.embed_tokens.weight", "transformer.wte.weight", "embed_tokens.weight"):
            if cand in ck:
                return cand
    return None


class _VocabAligner:
    """Row permutations mapping each model's embedding rows onto the chosen tokenizer's vocabulary."""

    def __init__(self, size: int, maps: dict[str, Any], needed: bool):
        self.size = size
        self.maps = maps
        self.needed = needed

    @classmethod
    def maybe(cls, config: MergeConfig, models: dict[str, Checkpoint], base_key: str | None, tok_dir: Path | None):
        if config.tokenizer_source is None or tok_dir is None:
            return None
        target = _vocab(tok_dir)
        if target is None:
            raise InputError(f"tokenizer_source: no tokenizer.json in {tok_dir} to take the vocabulary from.")
        size = max(target.values()) + 1
        maps: dict[str, Any] = {}
        needed = False
        for key, ck in models.items():
            v = _vocab(ck.model_dir)
            if v is None:
                raise InputError(f"tokenizer_source is set but model {key} has no tokenizer.json to align its embeddings by.")
            perm = torch.full((size,), -1, dtype=torch.long)
            for tok, i in target.items():
                j = v.get(tok)
                if j is not None:
                    perm[i] = j
            ident = torch.arange(size)
            if len(v) != len(target) or not torch.equal(perm, ident):
                needed = True
            maps[key] = perm
        maps["__base__"] = base_key
        return cls(size, maps, needed)


def _vocab(d: Path) -> dict[str, int] | None:
    f = d / "tokenizer.json"
    if not f.is_file():
        return None
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(f)).get_vocab(with_added_tokens=True)
