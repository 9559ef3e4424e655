"""The method-aware checks: a structurally valid recipe measured against its merge method.

Run by `load_config` after the schema (`modelmix.config.schema`) accepted the recipe's shape, before any
checkpoint is opened. Each rule that needs the method lives here: the method exists; every parameter is
declared by it, set at a level its scope allows, of its type and within its bounds (`Param.validate`, the
registry's one validator); required parameters are set for every model that needs them; the model counts,
the base model and the slices' layer ranges fit the method; the dtype names are known. Parameter values are
coerced in place (the YAML string ``1e-3`` becomes a number), so resolution (`modelmix.config.params`) reads
typed values. The first problem raises one `ConfigError` naming the recipe and the key path.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from modelmix.config.dtypes import DTYPES, MERGEKIT_DTYPES, dtype_name
from modelmix.config.refs import ModelRef
from modelmix.config.schema import MergeConfig
from modelmix.errors import ConfigError, did_you_mean
from modelmix.methods.registry import Param, get_method, short


class Checker:
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
            if value is not None and dtype_name(value) is None:
                self.fail(
                    key,
                    f'unknown dtype "{value}".{did_you_mean(value, DTYPES)} '
                    f"Use one of {', '.join(MERGEKIT_DTYPES)} (or bf16, fp16, fp32).",
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
            self.fail(f"{where}.filter", f"expected a substring of tensor names (a string), got {short(f)}.")
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
            base = cfg.slice_base(i)
            if method.needs_base and base is None:
                self.fail(
                    f"{where}.base_model",
                    f'merge method "{method.name}" needs a base_model (global or per slice).',
                )
            inputs = cfg.input_models(i)
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
                    base = cfg.slice_base(i)
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
