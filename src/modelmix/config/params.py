"""Per-tensor parameter resolution: the value of one parameter for one tensor, model and layer.

The rules copy mergekit 0.1.5 (line references in brackets), so a mergekit recipe merges the same way:

* Precedence [config.py ConfigReader.parameter_sources]: slice source > slice > model (models mode) >
  global. (``models`` and ``slices`` are mutually exclusive, so at most three levels apply at once; in models
  mode each ``models`` entry is a source of one implicit slice, so its parameters take the "model" level.)
  Global-scope lookups (``model`` None) skip the source/model levels, as mergekit does for shared parameters.
* Filters: a list of ``{filter, value}``; the first entry whose filter is ``None``, ``"*"`` or a substring of
  the tensor name wins; if none matches, the level counts as unset and the next level is tried
  [parameter_resolver.py resolve_parameter]. mergekit matches per-model parameters against the *input*
  tensor name and global ones against the output name; callers pass the name they want matched.
* Gradients [config.py evaluate_setting]: a list of numbers is sampled at ``t``: ``scaled = t*(n-1)``,
  ``i0 = int(scaled)``, ``i1 = min(n-1, i0+1)``, linear interpolation between them. A list containing
  booleans/strings picks ``values[int(t*(n-1))]``. Values were coerced at load time with the parameter's
  type (`modelmix.config.checks`), so the YAML string ``1e-3`` is a number here. For ``int`` parameters the
  interpolated value is rounded (mergekit would fail on a fractional result).
* ``t`` [plan.py plan_slice]: layer ``i`` of a slice with ``n`` layers gets ``i/(n-1)``, and ``1`` when
  ``n == 1`` (not 0!). Tensors outside the layer stack (embeddings, final norm, lm_head) get ``t = 0``
  [plan.py plan_module: ConfigReader(t=0)], i.e. the first gradient value. In slices mode mergekit reads those
  tensors' parameters from the first slice (pre-layer weights) and the last slice (post-layer weights).

`MergeConfig.resolve_param` / ``get_param`` are the entry points; this module holds the rules they apply.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from modelmix.config.refs import ModelRef
    from modelmix.config.schema import MergeConfig

_SCALAR = (bool, int, float, str)


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


def settings_chain(cfg: MergeConfig, model: ModelRef | None, slice_index: int | None) -> list[dict[str, Any]]:
    """The ``parameters`` blocks that apply to ``model`` in one merge group, highest precedence first."""
    chain: list[dict[str, Any]] = []
    if cfg.slices:
        if slice_index is None:
            raise ValueError("slice_index is required for a recipe with slices")
        out = cfg.slices[slice_index]
        if model is not None:
            chain += [src.parameters for src in out.sources if src.model == model and src.parameters]
        if out.parameters:
            chain.append(out.parameters)
    else:
        if slice_index not in (None, 0, -1):
            raise ValueError(f"slice_index {slice_index} given for a recipe without slices")
        if model is not None:
            chain += [m.parameters for m in cfg.models or () if m.model == model and m.parameters]
    if cfg.parameters:
        chain.append(cfg.parameters)
    return chain


def evaluate(setting: Any, tensor_name: str, t: float) -> Any:
    """mergekit's evaluate_setting on already-coerced values; None when no filter matches."""
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
            return evaluate(cond["value"], tensor_name, t)
    return None


def coerce(ptype: Any, value: Any) -> Any:
    """An evaluated value in its parameter's type: an interpolated int rounded, an int given for a float."""
    if ptype is int and isinstance(value, float):
        return int(round(value))
    if ptype is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value
