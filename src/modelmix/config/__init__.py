"""Merge recipes: mergekit 0.1.5's YAML schema, validated up front, and per-tensor parameter resolution.

A mergekit user's recipe must run unchanged, so the schema and the evaluation rules copy mergekit 0.1.5
(``mergekit/config.py``, ``parameter_resolver.py``, ``plan.py``, ``common.py``). Unlike mergekit,
everything is checked at load time, before any checkpoint is opened: unknown keys, unknown methods and
parameters, wrong types, out-of-range values and structural rules each raise one `ConfigError` paragraph
naming the file and key path (``models[1].parameters.densty``) with a "did you mean" hint.

The package, in the order a recipe goes through it:

* `loading`  -- `load_config`: YAML -> raw mapping, the top-level rules that need it, then the two below
* `schema`   -- the pydantic classes (`MergeConfig` ...) and the queries later stages ask of a recipe
* `messages` -- pydantic's errors worded in the recipe's terms
* `checks`   -- the method-aware checks (parameters, model counts, slices), run after the schema
* `params`   -- parameter resolution for one tensor (precedence, filters, gradients, `layer_t`)
* `refs`     -- model references (`ModelRef`); `dtypes` -- dtype names (`parse_dtype`)

Public API (used by the planner/executor; keep stable; import it from ``modelmix.config``)::

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
        .slice_base(slice_index=None) -> ModelRef | None    base of one merge group (the slice's or global)
        .resolve_param(name, *, tensor_name, t, model=None, slice_index=None) -> Any | None
        .get_param(...)                         same, then Param.default; ConfigError if required and unset
        .tokenizer_model() -> ModelRef | None   the model whose tokenizer is used, if any
        .to_yaml() -> str                       normalized recipe, for the output model card
    ModelRef(path, lora=None, override_architecture=None): frozen; str() gives the original spelling;
        ``base_dir`` is the recipe's folder, the second place `modelmix.io.checkpoint.resolve_model_path`
        looks (after the CWD, as mergekit, which hands relative paths to transformers). Resolution happens
        when a checkpoint is opened, not at load time, so checkpoints may appear later.
    layer_t(layer_index, num_layers_in_slice) -> float   gradient position, exactly as mergekit
    parse_dtype(name) -> torch.dtype | None

Model references [common.py ModelReference.validate_string]: ``path+lora`` splits on ``+`` (more than one
``+`` is an error); the dict form ``{model: ..., lora: ..., override_architecture: ...}`` is accepted too.
Hub revisions (``model: {path, revision}``) are rejected: modelmix reads local checkpoints only. A ``@``
inside a path string is kept verbatim (mergekit would read it as a Hub revision).
"""

from modelmix.config.dtypes import parse_dtype
from modelmix.config.loading import load_config
from modelmix.config.params import layer_t
from modelmix.config.refs import ModelRef
from modelmix.config.schema import InputModel, InputSlice, MergeConfig, OutputSlice

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
