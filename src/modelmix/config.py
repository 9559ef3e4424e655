"""Merge recipes: mergekit 0.1.5's YAML schema, validated up front, and per-tensor parameter resolution.

A mergekit user's recipe must run unchanged, so the schema and the evaluation rules below copy mergekit
0.1.5 (``mergekit/config.py``, ``parameter_resolver.py``, ``plan.py``, ``common.py``). Unlike mergekit,
everything is checked at load time, before any checkpoint is opened: unknown keys, unknown methods and
parameters, wrong types, out-of-range values and structural rules each raise one `ConfigError` paragraph
naming the file and key path (``models[1].parameters.densty``) with a "did you mean" hint.

Public API (used by the planner/executor; keep stable)::

    load_config(source: str | Path | dict, *, base_dir: Path | None = None) -> MergeConfig
        source: a recipe path, YAML text (any str containing a newline) or an already-parsed dict.
        base_dir: second place to look for relative model paths (default: the recipe file's folder).
    MergeConfig (pydantic):
        merge_method: str; base_model: ModelRef | None; models: list[InputModel] | None
        slices: list[OutputSlice] | None; parameters: dict | None; dtype / out_dtype: str | None
        tokenizer_source: str | None ("base" or a model path; a ``tokenizer: {source: ...}`` block is folded
        in here); chat_template: str | None; random_seed: int | None; name: str | None (ignored)
        .method() -> Method                     registry lookup
        .referenced_models() -> list[ModelRef]  unique, first-appearance order, base first
        .input_models(slice_index=None) -> list[ModelRef]   inputs of one merge group, as mergekit orders them
        .resolve_param(name, *, tensor_name, t, model=None, slice_index=None) -> Any | None
        .get_param(...)                         same, then Param.default; ConfigError if required and unset
        .tokenizer_model() -> ModelRef | None   the model whose tokenizer is used, if any
        .to_yaml() -> str                       normalized recipe, for the output model card
    ModelRef(path, lora=None, override_architecture=None): frozen; str() gives the original spelling;
        .local_path() / .lora_local_path() / .candidates() resolve relative paths (see below).
    layer_t(layer_index, num_layers_in_slice) -> float   gradient position, exactly as mergekit
    parse_dtype(name) -> torch.dtype | None

Semantics (mergekit 0.1.5 line references in brackets):

* Relative model paths: mergekit hands them to transformers, i.e. resolves them against the CWD. We try the
  CWD first (so existing setups behave the same) and then the recipe's folder (so a recipe next to its
  models works from anywhere). If neither exists, the CWD path is returned; ``candidates()`` lists both for
  error messages. Resolution happens when asked, not at load time, so checkpoints may appear later.
* ``path+lora`` splits on ``+`` (more than one ``+`` is an error) [common.py ModelReference.validate_string];
  the dict form ``{model: ..., lora: ..., override_architecture: ...}`` is accepted too. Hub revisions
  (``model: {path, revision}``) are rejected: modelmix reads local checkpoints only. A ``@`` inside a path
  string is kept verbatim (mergekit would read it as a Hub revision).
* Gradients [config.py evaluate_setting]: a list of numbers is sampled at ``t``: ``scaled = t*(n-1)``,
  ``i0 = int(scaled)``, ``i1 = min(n-1, i0+1)``, linear interpolation between them. A list containing
  booleans/strings picks ``values[int(t*(n-1))]``. Values are coerced with pydantic like mergekit does, so the
  YAML string ``1e-3`` is a number for numeric parameters. For ``int`` parameters the interpolated value is
  rounded (mergekit would fail on a fractional result).
* ``t`` [plan.py plan_slice]: layer ``i`` of a slice with ``n`` layers gets ``i/(n-1)``, and ``1`` when
  ``n == 1`` (not 0!). Tensors outside the layer stack (embeddings, final norm, lm_head) get ``t = 0``
  [plan.py plan_module: ConfigReader(t=0)], i.e. the first gradient value. In slices mode mergekit reads those
  tensors' parameters from the first slice (pre-layer weights) and the last slice (post-layer weights).
* Filters: a list of ``{filter, value}``; the first entry whose filter is ``None``, ``"*"`` or a substring of
  the tensor name wins; if none matches, the level counts as unset and the next level is tried
  [parameter_resolver.py resolve_parameter]. mergekit matches per-model parameters against the *input*
  tensor name and global ones against the output name; callers pass the name they want matched.
* Precedence [config.py ConfigReader.parameter_sources]: slice source > slice > model (models mode) >
  global. (``models`` and ``slices`` are mutually exclusive, so at most three levels apply at once; in models
  mode each ``models`` entry is a source of one implicit slice, so its parameters take the "model" level.)
* tokenizer_source: ``base`` (the base model, else the first referenced model [tokenizer/build.py]) or a
  model reference. ``union`` (mergekit's default for a ``tokenizer:`` block), ``tokens`` and
  ``pad_to_multiple_of`` are rejected as not supported yet. Setting both ``tokenizer_source`` and
  ``tokenizer`` is an error, as in mergekit.
* mergekit silently ignores unknown keys; we reject them, except ``name`` (used by mergekit-multi) and a
  slice's ``residual_weight`` (declared but unused by mergekit), which are accepted and ignored.
  ``modules`` and mergekit-moe / multi-document recipes are rejected as not supported.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    PlainSerializer,
    PlainValidator,
    PrivateAttr,
    StrictInt,
    ValidationError,
    ValidationInfo,
)

from modelmix.errors import ConfigError, did_you_mean
from modelmix.methods.registry import Method, Param, get_method

if TYPE_CHECKING:
    import torch

__all__ = [
    "InputModel",
    "InputSlice",
    "MergeConfig",
    "ModelRef",
    "OutputSlice",
    "layer_t",
    "load_config",
    "parse_dtype",
]

_SCALAR = (bool, int, float, str)
_DTYPES = {
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
    "float64": "float64",
    "fp64": "float64",
    "double": "float64",
}
_MERGEKIT_DTYPES = ("bfloat16", "float16", "float32", "float64")


# --------------------------------------------------------------------------------------------------------
# model references


@dataclass(frozen=True)
class ModelRef:
    """A model (local folder) optionally with a LoRA adapter; equality is by spelling, as in mergekit."""

    path: str
    lora: str | None = None
    override_architecture: str | None = None
    base_dir: Path | None = field(default=None, compare=False, repr=False)

    def __str__(self) -> str:
        return f"{self.path}+{self.lora}" if self.lora else self.path

    @classmethod
    def parse(cls, value: Any, base_dir: Path | None = None) -> ModelRef:
        """Parse ``path``, ``path+lora`` or mergekit's dict form; raises ValueError with a readable message."""
        if isinstance(value, ModelRef):
            return value if value.base_dir is not None or base_dir is None else _with_dir(value, base_dir)
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        if isinstance(value, str):
            chunks = value.split("+")
            if len(chunks) > 2:
                raise ValueError(
                    f'cannot parse model reference "{value}": expected "path" or "path+lora_path"'
                )
            if any(not c.strip() for c in chunks):
                raise ValueError(f'empty path in model reference "{value}"')
            return cls(chunks[0], chunks[1] if len(chunks) == 2 else None, None, base_dir)
        if isinstance(value, dict):
            allowed = ("model", "lora", "override_architecture")
            for key in value:
                if key not in allowed:
                    raise ValueError(
                        f'unknown key "{key}" in model reference.{did_you_mean(key, allowed)} '
                        f"Allowed keys: {', '.join(allowed)}."
                    )
            if "model" not in value:
                raise ValueError('a model reference given as a mapping needs a "model" key')
            arch = value.get("override_architecture")
            if arch is not None and not isinstance(arch, str):
                raise ValueError(f"override_architecture must be a string, got {arch!r}")
            lora = value.get("lora")
            return cls(_path_of(value["model"]), None if lora is None else _path_of(lora), arch, base_dir)
        raise ValueError(f'expected a model path such as "./models/base" or "path+lora", got {_short(value)}')

    def candidates(self) -> list[Path]:
        """Where the model may be, in lookup order (CWD, then the recipe's folder)."""
        return _candidates(self.path, self.base_dir)

    def local_path(self) -> Path:
        """The model folder: the first candidate that exists, else the CWD-relative path."""
        return _resolve(self.path, self.base_dir)

    def lora_local_path(self) -> Path | None:
        return None if self.lora is None else _resolve(self.lora, self.base_dir)


def _with_dir(ref: ModelRef, base_dir: Path) -> ModelRef:
    return ModelRef(ref.path, ref.lora, ref.override_architecture, base_dir)


def _path_of(value: Any) -> str:
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, dict):
        unknown = [k for k in value if k not in ("path", "revision")]
        if unknown:
            raise ValueError(
                f'unknown key "{unknown[0]}" in model path.{did_you_mean(unknown[0], ("path", "revision"))}'
            )
        if value.get("revision") is not None:
            raise ValueError(
                f'Hugging Face Hub revisions are not supported (revision "{value["revision"]}"): '
                "modelmix reads local checkpoints; download the model and give its folder"
            )
        if isinstance(value.get("path"), str) and value["path"].strip():
            return value["path"]
    raise ValueError(f"expected a model path string, got {_short(value)}")


def _candidates(path: str, base_dir: Path | None) -> list[Path]:
    p = Path(path).expanduser()
    if p.is_absolute():
        return [p]
    out = [Path.cwd() / p]
    if base_dir is not None:
        alt = Path(base_dir).resolve() / p
        if alt != out[0]:
            out.append(alt)
    return out


def _resolve(path: str, base_dir: Path | None) -> Path:
    cands = _candidates(path, base_dir)
    for c in cands:
        if c.exists():
            return c
    return cands[0]


def _validate_ref(value: Any, info: ValidationInfo) -> ModelRef:
    base_dir = (info.context or {}).get("base_dir")
    return ModelRef.parse(value, base_dir)


def _serialize_ref(ref: ModelRef) -> Any:
    if ref.override_architecture is not None:
        out = {"model": ref.path, "lora": ref.lora, "override_architecture": ref.override_architecture}
        return {k: v for k, v in out.items() if v is not None}
    return str(ref)


Ref = Annotated[ModelRef, PlainValidator(_validate_ref), PlainSerializer(_serialize_ref)]


# --------------------------------------------------------------------------------------------------------
# schema


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)


class InputModel(_Strict):
    """One entry of ``models:``."""

    model: Ref
    parameters: dict[str, Any] | None = None


class InputSlice(_Strict):
    """One source of an output slice: layers [start, end) of ``model``."""

    model: Ref
    layer_range: tuple[int, int]
    parameters: dict[str, Any] | None = None


class OutputSlice(_Strict):
    """One entry of ``slices:``; its sources are merged layer by layer."""

    sources: list[InputSlice]
    base_model: Ref | None = None
    parameters: dict[str, Any] | None = None
    residual_weight: float | None = None  # accepted and ignored, as in mergekit

    @property
    def num_layers(self) -> int:
        start, end = self.sources[0].layer_range
        return end - start


class MergeConfig(_Strict):
    """A validated recipe. Build it with `load_config`, which also runs the method-aware checks."""

    merge_method: str
    base_model: Ref | None = None
    models: list[InputModel] | None = None
    slices: list[OutputSlice] | None = None
    parameters: dict[str, Any] | None = None
    dtype: str | None = None
    out_dtype: str | None = None
    tokenizer_source: str | None = None
    chat_template: str | None = None
    random_seed: StrictInt | None = None
    name: str | None = None  # mergekit-multi document name; accepted and ignored

    _source: str = PrivateAttr(default="recipe")
    _sources_cache: dict[Any, list[dict[str, Any]]] = PrivateAttr(default_factory=dict)
    _ptypes: dict[str, Any] = PrivateAttr(default_factory=dict)

    # ---- queries ------------------------------------------------------------------------------------

    @property
    def source_label(self) -> str:
        """The recipe file (or "recipe") for error messages of later stages."""
        return self._source

    def method(self) -> Method:
        return get_method(self.merge_method)

    def referenced_models(self) -> list[ModelRef]:
        seen: dict[ModelRef, None] = {}
        if self.base_model is not None:
            seen[self.base_model] = None
        for m in self.models or ():
            seen.setdefault(m.model, None)
        for s in self.slices or ():
            for src in s.sources:
                seen.setdefault(src.model, None)
            if s.base_model is not None:
                seen.setdefault(s.base_model, None)
        return list(seen)

    def input_models(self, slice_index: int | None = None) -> list[ModelRef]:
        """The inputs of one merge group in mergekit's order: recipe order, base appended if not listed.

        Models mode: ``slice_index`` None (or 0). Slices mode: that slice's sources (the base must be listed).
        """
        if self.slices:
            if slice_index is None:
                raise ValueError("slice_index is required for a recipe with slices")
            return [src.model for src in self.slices[slice_index].sources]
        refs = [m.model for m in self.models or ()]
        if self.base_model is not None and self.base_model not in refs:
            refs.append(
                self.base_model
            )  # plan.py normalize_config: "Base model ... not in input models - adding"
        return refs

    def slice_base(self, slice_index: int | None = None) -> ModelRef | None:
        """The base model of a slice (its own ``base_model`` or the global one)."""
        if self.slices and slice_index is not None and self.slices[slice_index].base_model is not None:
            return self.slices[slice_index].base_model
        return self.base_model

    def tokenizer_model(self) -> ModelRef | None:
        """The model whose tokenizer is used, or None when ``tokenizer_source`` is unset."""
        src = self.tokenizer_source
        if src is None:
            return None
        if src == "base":
            return self.base_model or self.referenced_models()[0]
        return ModelRef.parse(src, _base_dir_of(self))

    def resolve_param(
        self,
        name: str,
        *,
        tensor_name: str,
        t: float,
        model: ModelRef | None = None,
        slice_index: int | None = None,
    ) -> Any | None:
        """Value of ``name`` for this tensor at gradient position ``t``; None when no level sets it.

        ``model`` is None for global-scope parameters (then source/model levels are skipped, as mergekit
        does for shared parameters). ``slice_index`` is required in slices mode; in models mode pass None
        (0 is accepted too).
        """
        for settings in self._settings_chain(model, slice_index):
            if name in settings:
                value = _evaluate(settings[name], tensor_name, t)
                if value is not None:
                    return _finish(self._param_type(name), value)
        return None

    def get_param(
        self,
        name: str,
        *,
        tensor_name: str,
        t: float,
        model: ModelRef | None = None,
        slice_index: int | None = None,
    ) -> Any:
        """`resolve_param`, falling back to the method's default; ConfigError if required and unset."""
        value = self.resolve_param(name, tensor_name=tensor_name, t=t, model=model, slice_index=slice_index)
        if value is not None:
            return value
        p = self.method().param(name)
        if p.required:
            who = f' for model "{model}"' if model is not None else ""
            raise ConfigError(
                f'{self._source}: parameter "{name}" of merge method "{self.merge_method}" is not set{who} '
                f'for tensor "{tensor_name}" (its filters match nothing at any level). Add a catch-all entry '
                f"(a `- value: ...` without filter) or set it in the top-level parameters."
            )
        return p.default

    def to_yaml(self) -> str:
        data = self.model_dump(mode="python", exclude_none=True)
        order = [
            "name", "merge_method", "base_model", "models", "slices", "parameters", "dtype", "out_dtype",
            "tokenizer_source", "chat_template", "random_seed",
        ]  # fmt: skip
        data = {k: data[k] for k in order if k in data}
        return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True).rstrip() + "\n"

    # ---- internals ----------------------------------------------------------------------------------

    def _param_type(self, name: str) -> Any:
        if name not in self._ptypes:
            try:
                self._ptypes[name] = self.method().param(name).type
            except (KeyError, ConfigError):
                self._ptypes[name] = None
        return self._ptypes[name]

    def _settings_chain(self, model: ModelRef | None, slice_index: int | None) -> list[dict[str, Any]]:
        key = (model, slice_index)
        chain = self._sources_cache.get(key)
        if chain is not None:
            return chain
        chain = []
        if self.slices:
            if slice_index is None:
                raise ValueError("slice_index is required for a recipe with slices")
            out = self.slices[slice_index]
            if model is not None:
                chain += [src.parameters for src in out.sources if src.model == model and src.parameters]
            if out.parameters:
                chain.append(out.parameters)
        else:
            if slice_index not in (None, 0, -1):
                raise ValueError(f"slice_index {slice_index} given for a recipe without slices")
            if model is not None:
                chain += [m.parameters for m in self.models or () if m.model == model and m.parameters]
        if self.parameters:
            chain.append(self.parameters)
        self._sources_cache[key] = chain
        return chain


def _base_dir_of(cfg: MergeConfig) -> Path | None:
    for ref in cfg.referenced_models():
        return ref.base_dir
    return None


class _Dumper(yaml.SafeDumper):
    """Lists of numbers in flow style, like mergekit's ConfigYamlDumper."""

    def represent_list(self, data: Iterable[Any]) -> yaml.SequenceNode:
        data = list(data)
        flow = all(isinstance(e, (int, float)) for e in data)
        return self.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _Dumper.represent_list)
_Dumper.add_representer(tuple, _Dumper.represent_list)


# --------------------------------------------------------------------------------------------------------
# gradients / filters


def layer_t(layer_index: int | None, num_layers_in_slice: int) -> float:
    """Gradient position of a layer inside its slice, exactly as mergekit's plan.py.

    ``layer_index`` is relative to the slice (0-based); None for tensors outside the layer stack -> 0.
    A one-layer slice gets 1, not 0 (``t = idx / (n - 1) if n > 1 else 1``).
    """
    if layer_index is None:
        return 0.0
    if not 0 <= layer_index < num_layers_in_slice:
        raise ValueError(f"layer index {layer_index} outside a slice of {num_layers_in_slice} layers")
    if num_layers_in_slice > 1:
        return layer_index / (num_layers_in_slice - 1)
    return 1.0


def _evaluate(setting: Any, tensor_name: str, t: float) -> Any:
    """mergekit's evaluate_setting on already-coerced values."""
    if isinstance(setting, dict):
        setting = [setting]
    if isinstance(setting, _SCALAR):
        return setting
    if not setting:
        return None
    if all(isinstance(e, _SCALAR) for e in setting):
        if not all(isinstance(e, (int, float)) and not isinstance(e, bool) for e in setting):
            return setting[int(t * (len(setting) - 1))]
        scaled = t * (len(setting) - 1)
        i0 = int(scaled)
        i1 = min(len(setting) - 1, i0 + 1)
        frac = scaled - i0
        return (1 - frac) * setting[i0] + frac * setting[i1]
    for cond in setting:
        f = cond.get("filter")
        if f is None or f == "*" or (tensor_name and f in tensor_name):
            return _evaluate(cond["value"], tensor_name, t)
    return None


def _finish(ptype: Any, value: Any) -> Any:
    if ptype is int and isinstance(value, float):
        return int(round(value))
    if ptype is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


# --------------------------------------------------------------------------------------------------------
# dtypes


def _dtype_name(name: str) -> str | None:
    key = name.strip().lower()
    if key.startswith("torch."):
        key = key[len("torch.") :]
    return _DTYPES.get(key)


def parse_dtype(name: str | None) -> torch.dtype | None:
    """mergekit's dtype names (``bfloat16``, ``float16``, ``float32``, ``float64``, optionally ``torch.``-
    prefixed) plus the aliases bf16/fp16/fp32/fp64/half/float/double; None stays None."""
    if name is None:
        return None
    canonical = _dtype_name(str(name))
    if canonical is None:
        raise ConfigError(
            f'Unknown dtype "{name}".{did_you_mean(name, _DTYPES)} '
            f"Use one of {', '.join(_MERGEKIT_DTYPES)} (or bf16, fp16, fp32)."
        )
    import torch

    return getattr(torch, canonical)


# --------------------------------------------------------------------------------------------------------
# loading


def load_config(source: str | Path | dict, *, base_dir: Path | None = None) -> MergeConfig:
    """Read and fully validate a recipe (see the module docstring); raises ConfigError on any problem."""
    label = "recipe"
    if isinstance(source, dict):
        raw: Any = source
    elif isinstance(source, str) and "\n" in source:
        raw = _parse_yaml(source, label)
    else:
        path = Path(source)
        label = str(path)
        if not path.is_file():
            raise ConfigError(
                f"{label}: recipe file not found." if not path.exists() else f"{label}: not a file."
            )
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"{label}: cannot read the recipe ({e}).") from None
        raw = _parse_yaml(text, label)
        if base_dir is None:
            base_dir = path.resolve().parent
    if base_dir is not None:
        base_dir = Path(base_dir).resolve()
    return _build(raw, label, base_dir)


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys (PyYAML silently keeps the last one)."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    seen: dict[Any, Any] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            hash(key)
        except TypeError:
            continue
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f'duplicate key "{key}" (first at line {seen[key].line + 1})', key_node.start_mark
            )
        seen[key] = key_node.start_mark
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _parse_yaml(text: str, label: str) -> Any:
    try:
        docs = [d for d in yaml.load_all(text, Loader=_UniqueKeyLoader) if d is not None]
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = " ".join(str(x) for x in (e.context, e.problem) if x)
        raise ConfigError(f"{label}: YAML syntax error{where}: {what}.") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{label}: YAML syntax error: {e}.") from None
    if not docs:
        raise ConfigError(f"{label}: the recipe is empty.")
    if len(docs) > 1:
        raise ConfigError(
            f"{label}: the recipe contains {len(docs)} YAML documents (mergekit-multi style); "
            "modelmix runs one merge per recipe, so split it into one file per merge."
        )
    return docs[0]


_MOE_KEYS = ("experts", "gate_mode", "experts_per_token", "shared_experts")


def _build(raw: Any, label: str, base_dir: Path | None) -> MergeConfig:
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{label}: a recipe must be a mapping of keys (merge_method, models, ...), got {_short(raw)}."
        )
    raw = dict(raw)
    _pre_checks(raw, label)
    try:
        cfg = MergeConfig.model_validate(raw, context={"base_dir": base_dir})
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e, label)) from None
    cfg._source = label
    cfg._sources_cache = {}
    _Checker(cfg, label).run()
    cfg._sources_cache = {}
    return cfg


def _pre_checks(raw: dict[str, Any], label: str) -> None:
    """Top-level rules that need the raw mapping (unsupported mergekit features, the tokenizer block)."""
    for key in raw:
        if not isinstance(key, str):
            raise ConfigError(f"{label}: top-level key {key!r} is not a string.")
    if "modules" in raw:
        raise ConfigError(
            f"{label}: modules: per-module recipes (mergekit's `modules:` syntax for multi-module models) are "
            "not supported yet; use `models:` or `slices:`."
        )
    moe = [k for k in _MOE_KEYS if k in raw]
    if moe:
        raise ConfigError(
            f"{label}: {moe[0]}: this looks like a mergekit-moe recipe (mixture-of-experts construction), which "
            "modelmix does not support; it merges models in weight space (`merge_method:` recipes)."
        )
    if "tokenizer" in raw:
        tok = raw.pop("tokenizer")
        if raw.get("tokenizer_source") is not None and tok is not None:
            raise ConfigError(
                f"{label}: tokenizer: cannot specify both tokenizer_source and tokenizer (as in mergekit)."
            )
        if tok is not None:
            if not isinstance(tok, dict):
                raise ConfigError(
                    f"{label}: tokenizer: expected a mapping such as `source: base`, got {_short(tok)}."
                )
            allowed = ("source", "tokens", "pad_to_multiple_of")
            for key in tok:
                if key not in allowed:
                    raise ConfigError(
                        f"{label}: tokenizer.{key}: unknown key.{did_you_mean(key, allowed)} "
                        f"Allowed keys: {', '.join(allowed)}."
                    )
            if tok.get("tokens"):
                raise ConfigError(
                    f"{label}: tokenizer.tokens: per-token embedding sources are not supported yet; "
                    "remove the block and use `tokenizer: {source: base}` or a model path."
                )
            if tok.get("pad_to_multiple_of") is not None:
                raise ConfigError(
                    f"{label}: tokenizer.pad_to_multiple_of: padding the vocabulary is not supported yet."
                )
            source = tok.get("source", "union")  # mergekit's TokenizerConfig default
            _check_tokenizer_source(source, f"{label}: tokenizer.source")
            raw["tokenizer_source"] = source if isinstance(source, str) else str(ModelRef.parse(source))
    if "tokenizer_source" in raw and raw["tokenizer_source"] is not None:
        src = raw["tokenizer_source"]
        _check_tokenizer_source(src, f"{label}: tokenizer_source")
        if isinstance(src, dict):
            raw["tokenizer_source"] = str(ModelRef.parse(src))


def _check_tokenizer_source(src: Any, where: str) -> None:
    if src == "union":
        raise ConfigError(
            f'{where}: "union" (a tokenizer built from the union of all vocabularies) is not supported yet. '
            'Use "base" or the path of the model whose tokenizer to keep; all models must then share it.'
        )
    try:
        ModelRef.parse(src)
    except ValueError as e:
        raise ConfigError(f'{where}: expected "base" or a model path: {e}.') from None


# --------------------------------------------------------------------------------------------------------
# pydantic error translation


def _fmt_loc(loc: Sequence[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part == "[key]":
            continue
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _model_at(loc: Sequence[Any]) -> type[BaseModel] | None:
    """The schema class that owns the mapping at ``loc`` (for "did you mean" on unknown keys)."""
    cls: type[BaseModel] | None = MergeConfig
    for part in loc:
        if isinstance(part, int) or cls is None:
            continue
        f = cls.model_fields.get(part)
        cls = _find_model(f.annotation) if f is not None else None
    return cls


def _find_model(tp: Any) -> type[BaseModel] | None:
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp
    for arg in get_args(tp):
        found = _find_model(arg)
        if found is not None:
            return found
    return None


def _one_error(err: dict[str, Any]) -> str:
    loc = tuple(err["loc"])
    path = _fmt_loc(loc)
    kind = err["type"]
    given = _short(err.get("input"))
    if kind == "extra_forbidden":
        owner = _model_at(loc[:-1])
        allowed = list(owner.model_fields) if owner else []
        if owner is MergeConfig:
            allowed.append("tokenizer")
        hint = did_you_mean(str(loc[-1]), allowed)
        listing = f" Allowed keys here: {', '.join(allowed)}." if allowed else ""
        return f'{path}: unknown key "{loc[-1]}".{hint}{listing}'
    if kind == "missing":
        return f'{_fmt_loc(loc[:-1])}: required key "{loc[-1]}" is missing.'
    if kind in ("model_type", "model_attributes_type", "dict_type", "dataclass_type"):
        return f"{path}: expected a mapping of keys, got {given}."
    if kind in ("list_type", "tuple_type"):
        if loc and loc[-1] == "layer_range":
            return f"{path}: expected [start, end], got {given}."
        return f"{path}: expected a list, got {given}."
    if kind in ("too_short", "too_long") and loc and loc[-1] == "layer_range":
        return f"{path}: expected exactly two numbers [start, end], got {given}."
    if kind.startswith("int_"):
        return f"{path}: expected an integer, got {given}."
    if kind.startswith("float_"):
        return f"{path}: expected a number, got {given}."
    if kind.startswith("string_"):
        return f"{path}: expected a string, got {given}."
    if kind.startswith("bool_"):
        return f"{path}: expected true or false, got {given}."
    if kind == "value_error":
        exc = (err.get("ctx") or {}).get("error")
        msg = str(exc) if exc is not None else err["msg"]
        return f"{path}: {msg.rstrip('.')}."
    return f"{path}: {err['msg'].rstrip('.')} (got {given})."


def _format_validation_error(e: ValidationError, label: str) -> str:
    # unknown keys first: a typo ("mdel") also makes the intended key look missing
    errs = sorted(e.errors(include_url=False), key=lambda x: x["type"] != "extra_forbidden")
    first = _one_error(errs[0])
    rest = [_one_error(x) for x in errs[1:5]]
    more = f" Further problems: {' '.join(rest)}" if rest else ""
    extra = f" (and {len(errs) - 5} more)" if len(errs) > 5 else ""
    return f"{label}: {first}{more}{extra}"


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------------------------------------
# method-aware checks


class _Checker:
    """Validates a structurally parsed recipe against its merge method; coerces parameter values in place."""

    def __init__(self, cfg: MergeConfig, label: str) -> None:
        self.cfg = cfg
        self.label = label

    def fail(self, path: str, msg: str) -> None:
        raise ConfigError(f"{self.label}: {path}: {msg}")

    def run(self) -> None:
        cfg = self.cfg
        try:
            method = get_method(cfg.merge_method)
        except ConfigError as e:
            self.fail("merge_method", str(e))
            raise  # unreachable
        self.method = method
        for key in ("dtype", "out_dtype"):
            value = getattr(cfg, key)
            if value is not None and _dtype_name(value) is None:
                self.fail(
                    key,
                    f'unknown dtype "{value}".{did_you_mean(value, _DTYPES)} '
                    f"Use one of {', '.join(_MERGEKIT_DTYPES)} (or bf16, fp16, fp32).",
                )
        if cfg.random_seed is not None and cfg.random_seed < 0:
            self.fail("random_seed", f"expected a non-negative integer, got {cfg.random_seed!r}.")
        if bool(cfg.models) == bool(cfg.slices):
            which = "both are given" if cfg.models else "neither is given (or the list is empty)"
            self.fail(
                "models/slices",
                f"exactly one of `models:` (merge whole models) or `slices:` (layer ranges) must be present; {which}.",
            )
        self._check_params()
        if cfg.slices:
            self._check_slices()
        else:
            self._check_models()
        self._check_required()

    # ---- parameters --------------------------------------------------------------------------------

    def _levels(self) -> Iterator[tuple[str, dict[str, Any], bool, Any]]:
        """(path, settings, per_model_level, owner) for every parameters block."""
        cfg = self.cfg
        if cfg.parameters is not None:
            yield "parameters", cfg.parameters, False, cfg
        for i, m in enumerate(cfg.models or ()):
            if m.parameters is not None:
                yield f"models[{i}].parameters", m.parameters, True, m
        for i, s in enumerate(cfg.slices or ()):
            if s.parameters is not None:
                yield f"slices[{i}].parameters", s.parameters, False, s
            for j, src in enumerate(s.sources):
                if src.parameters is not None:
                    yield f"slices[{i}].sources[{j}].parameters", src.parameters, True, src

    def _check_params(self) -> None:
        method = self.method
        names = method.param_names
        for path, settings, per_model, owner in self._levels():
            normalized: dict[str, Any] = {}
            for name, setting in settings.items():
                where = f"{path}.{name}"
                try:
                    p = method.param(name)
                except KeyError:
                    known = f" Its parameters: {', '.join(names)}." if names else " It takes no parameters."
                    self.fail(
                        where,
                        f'unknown parameter for merge method "{method.name}".{did_you_mean(name, names)}{known}',
                    )
                if per_model and p.scope == "global":
                    self.fail(
                        where,
                        f'"{name}" is a global parameter of merge method "{method.name}" (one value for all '
                        "models), so it cannot be set per model; move it to the top-level `parameters:` "
                        "(or a slice's `parameters:`).",
                    )
                normalized[name] = self._setting(p, setting, where)
            owner.parameters = normalized

    def _setting(self, p: Param, setting: Any, where: str) -> Any:
        if isinstance(setting, dict):
            return self._cond(p, setting, where)
        if isinstance(setting, list):
            if not setting:
                return []
            if all(isinstance(e, dict) for e in setting):
                return [self._cond(p, e, f"{where}[{k}]") for k, e in enumerate(setting)]
            if any(isinstance(e, dict) for e in setting):
                self.fail(
                    where,
                    "mixes `{filter, value}` entries with plain values; use either a gradient list of numbers "
                    "or a list of `- filter: ...` / `value: ...` entries (a catch-all has no filter).",
                )
            return [self._scalar(p, e, f"{where}[{k}]") for k, e in enumerate(setting)]
        return self._scalar(p, setting, where)

    def _cond(self, p: Param, entry: dict[str, Any], where: str) -> dict[str, Any]:
        for key in entry:
            if key not in ("filter", "value"):
                self.fail(
                    f"{where}.{key}",
                    f"unknown key in a filtered value.{did_you_mean(str(key), ('filter', 'value'))} "
                    "Entries look like `- filter: self_attn` + `value: 0.5`.",
                )
        if "value" not in entry:
            self.fail(where, 'filtered entry without "value".')
        f = entry.get("filter")
        if f is not None and not isinstance(f, str):
            self.fail(f"{where}.filter", f"expected a substring of tensor names (a string), got {_short(f)}.")
        value = entry["value"]
        if isinstance(value, dict) or (
            isinstance(value, list) and any(isinstance(e, (dict, list)) for e in value)
        ):
            self.fail(
                f"{where}.value", "expected a value or a gradient list of values; filters cannot be nested."
            )
        out: dict[str, Any] = {}
        if f is not None:
            out["filter"] = f
        if isinstance(value, list):
            out["value"] = [self._scalar(p, e, f"{where}.value[{k}]") for k, e in enumerate(value)]
        else:
            out["value"] = self._scalar(p, value, f"{where}.value")
        return out

    def _scalar(self, p: Param, value: Any, where: str) -> Any:
        try:
            return p.validate(value)
        except ConfigError as e:
            self.fail(where, str(e))

    # ---- structure -----------------------------------------------------------------------------------

    def _count_check(self, where: str, inputs: list[ModelRef], base: ModelRef | None) -> None:
        method = self.method
        seen: set[ModelRef] = set()
        for ref in inputs:
            if ref in seen:
                self.fail(where, f'model "{ref}" is listed twice; each model may appear once per merge.')
            seen.add(ref)
        uses_base = method.uses_base and base is not None
        n = len([r for r in inputs if not (uses_base and r == base)])
        lo, hi = method.min_models, method.max_models
        noun = "model" if (hi if hi is not None else lo) == 1 else "models"
        what = f"{noun} besides the base model" if uses_base else noun
        if n < lo or (hi is not None and n > hi):
            need = (
                f"exactly {lo}"
                if hi == lo
                else (f"between {lo} and {hi}" if hi is not None else f"at least {lo}")
            )
            extra = ""
            if method.name == "passthrough" and not self.cfg.slices:
                extra = " (use `slices:` to stack layers of several models)"
            elif not method.uses_base and base is not None and self.cfg.models:
                extra = " (base_model counts as an input of this method)"
            self.fail(where, f'merge method "{method.name}" takes {need} {what}; got {n}{extra}.')

    def _check_models(self) -> None:
        cfg, method = self.cfg, self.method
        if method.needs_base and cfg.base_model is None:
            self.fail("base_model", f'merge method "{method.name}" needs a base_model.')
        self._count_check("models", cfg.input_models(), cfg.base_model)

    def _check_slices(self) -> None:
        cfg, method = self.cfg, self.method
        assert cfg.slices is not None
        for i, s in enumerate(cfg.slices):
            where = f"slices[{i}]"
            if not s.sources:
                self.fail(f"{where}.sources", "a slice needs at least one source.")
            lengths = []
            for j, src in enumerate(s.sources):
                start, end = src.layer_range
                if start < 0 or start >= end:
                    self.fail(
                        f"{where}.sources[{j}].layer_range",
                        f"expected [start, end) with 0 <= start < end, got [{start}, {end}].",
                    )
                lengths.append(end - start)
            if len(set(lengths)) > 1:
                self.fail(
                    f"{where}.sources",
                    f"all sources of a slice must span the same number of layers; got {lengths} "
                    "(as in mergekit).",
                )
            base = s.base_model or cfg.base_model
            if method.needs_base and base is None:
                self.fail(
                    f"{where}.base_model",
                    f'merge method "{method.name}" needs a base_model (global or per slice).',
                )
            inputs = [src.model for src in s.sources]
            if method.uses_base and base is not None and base not in inputs:
                self.fail(
                    f"{where}.sources",
                    f'the base model "{base}" must be one of the slice\'s sources (with the same layer_range) '
                    f'for merge method "{method.name}", as in mergekit.',
                )
            self._count_check(f"{where}.sources", inputs, base)

    def _check_required(self) -> None:
        cfg, method = self.cfg, self.method
        for p in method.params:
            if not p.required:
                continue
            if _has(cfg.parameters, p.name):
                continue
            if p.scope == "global":
                if cfg.slices and all(_has(s.parameters, p.name) for s in cfg.slices):
                    continue
                self.fail(
                    "parameters",
                    f'missing required parameter "{p.name}" for merge method "{method.name}"'
                    f"{' (' + p.help + ')' if p.help else ''}; set `parameters: {{{p.name}: ...}}`.",
                )
            if cfg.slices:
                for i, s in enumerate(cfg.slices):
                    base = s.base_model or cfg.base_model
                    for j, src in enumerate(s.sources):
                        if method.uses_base and base is not None and src.model == base:
                            continue
                        if not (_has(src.parameters, p.name) or _has(s.parameters, p.name)):
                            self.fail(
                                f"slices[{i}].sources[{j}].parameters",
                                f'missing required parameter "{p.name}" for model "{src.model}" (merge method '
                                f'"{method.name}"); set it here, in slices[{i}].parameters or in the top-level parameters.',
                            )
            else:
                base = cfg.base_model
                for ref in cfg.input_models():
                    if method.uses_base and base is not None and ref == base:
                        continue
                    entries = [(k, m) for k, m in enumerate(cfg.models or ()) if m.model == ref]
                    if any(_has(m.parameters, p.name) for _, m in entries):
                        continue
                    where = f"models[{entries[0][0]}].parameters" if entries else "base_model"
                    hint = (
                        f"; the base model is an input of this method, so list it under `models:` with a {p.name}"
                        if not entries
                        else ""
                    )
                    self.fail(
                        where,
                        f'missing required parameter "{p.name}" for model "{ref}" (merge method "{method.name}")'
                        f"{hint}; or set it in the top-level parameters.",
                    )


def _has(settings: dict[str, Any] | None, name: str) -> bool:
    return bool(settings) and name in settings and settings[name] != []
