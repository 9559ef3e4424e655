"""The recipe schema (pydantic): mergekit 0.1.5's keys and structure, and the queries later stages ask.

The classes here check shape only: which keys exist, which are lists or mappings, which are strings or
integers. Everything that needs the merge method (parameter names, types, bounds, model counts) is
`modelmix.config.checks`' job, run by `modelmix.config.loading.load_config` right after validation; build a
`MergeConfig` with `load_config`, never directly.

mergekit silently ignores unknown keys; we reject them (``extra="forbid"``), except ``name`` (used by
mergekit-multi) and a slice's ``residual_weight`` (declared but unused by mergekit), which are accepted and
ignored. Model references (`ModelRef`) are parsed with the recipe's folder from the validation context, so
they can be found relative to it later.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    PlainSerializer,
    PlainValidator,
    PrivateAttr,
    StrictInt,
    ValidationInfo,
)

from modelmix.config.params import coerce, evaluate, settings_chain
from modelmix.config.refs import ModelRef
from modelmix.errors import ConfigError
from modelmix.methods.registry import Method, get_method


def _validate_ref(value: Any, info: ValidationInfo) -> ModelRef:
    base_dir = (info.context or {}).get("base_dir")
    return ModelRef.parse(value, base_dir)


def _serialize_ref(ref: ModelRef) -> Any:
    if ref.override_architecture is not None:
        out = {"model": ref.path, "lora": ref.lora, "override_architecture": ref.override_architecture}
        return {k: v for k, v in out.items() if v is not None}
    return str(ref)


Ref = Annotated[ModelRef, PlainValidator(_validate_ref), PlainSerializer(_serialize_ref)]


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

    _source: str = PrivateAttr(default="recipe")  # the recipe file (or "recipe"), for get_param's message
    _sources_cache: dict[Any, list[dict[str, Any]]] = PrivateAttr(default_factory=dict)
    _ptypes: dict[str, Any] = PrivateAttr(default_factory=dict)

    # ---- queries ------------------------------------------------------------------------------------

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
        (0 is accepted too). The rules are `modelmix.config.params`'.
        """
        for settings in self._settings_chain(model, slice_index):
            if name in settings:
                value = evaluate(settings[name], tensor_name, t)
                if value is not None:
                    return coerce(self._param_type(name), value)
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
        """The normalized recipe, for the output model card."""
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
        if chain is None:
            chain = self._sources_cache[key] = settings_chain(self, model, slice_index)
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
