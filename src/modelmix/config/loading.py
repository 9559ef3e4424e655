"""Loading a recipe: YAML text or file -> raw mapping -> validated `MergeConfig`.

`load_config` is the one way to build a `MergeConfig`. It reads YAML strictly (duplicate keys and
multi-document files are errors, with line numbers), applies the top-level rules that need the raw mapping,
then runs the schema (`modelmix.config.schema`, its errors worded by `modelmix.config.messages`) and the
method-aware checks (`modelmix.config.checks`). Every problem is one `ConfigError` naming the recipe.

Top-level rules applied here, before the schema:

* tokenizer_source: ``base`` (the base model, else the first referenced model [tokenizer/build.py]) or a
  model reference. ``union`` (mergekit's default for a ``tokenizer:`` block), ``tokens`` and
  ``pad_to_multiple_of`` are rejected as not supported yet. Setting both ``tokenizer_source`` and
  ``tokenizer`` is an error, as in mergekit. A ``tokenizer: {source: ...}`` block is folded into
  ``tokenizer_source``.
* ``modules`` and mergekit-moe / multi-document recipes are rejected as not supported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from modelmix.config.checks import Checker
from modelmix.config.messages import format_validation_error
from modelmix.config.refs import ModelRef
from modelmix.config.schema import MergeConfig
from modelmix.errors import ConfigError, did_you_mean
from modelmix.methods.registry import short


def load_config(source: str | Path | dict, *, base_dir: Path | None = None) -> MergeConfig:
    """Read and fully validate a recipe (see the package docstring); raises ConfigError on any problem."""
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
            f"{label}: a recipe must be a mapping of keys (merge_method, models, ...), got {short(raw)}."
        )
    raw = dict(raw)
    _pre_checks(raw, label)
    try:
        cfg = MergeConfig.model_validate(raw, context={"base_dir": base_dir})
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, label)) from None
    cfg._source = label
    cfg._sources_cache = {}
    Checker(cfg, label).run()
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
                    f"{label}: tokenizer: expected a mapping such as `source: base`, got {short(tok)}."
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
