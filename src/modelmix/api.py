"""Python API mirroring the CLI: ``merge`` (recipe -> model dir) and ``merge_tensors`` (in memory)."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from modelmix.errors import ConfigError, InputError


@dataclass
class MergeResult:
    out_dir: Path
    tensors: int
    bytes_written: int
    seconds: float

    def summary(self) -> str:
        gbs = self.bytes_written / 1e9
        return (
            f"merged {self.tensors} tensors, {gbs:.2f} GB written to {self.out_dir} in {self.seconds:.1f}s "
            f"({gbs / max(self.seconds, 1e-9):.2f} GB/s)"
        )


def _load(config: Any, base_dir: Path | None):
    from modelmix.config import MergeConfig, load_config

    if isinstance(config, MergeConfig):
        return config, base_dir
    if isinstance(config, str) and "\n" in config:  # YAML text (a path never holds a newline)
        return load_config(config), base_dir
    if isinstance(config, (str, Path)):
        p = Path(config)
        return load_config(p), base_dir or p.parent.resolve()
    if isinstance(config, Mapping):
        return load_config(dict(config)), base_dir
    raise ConfigError(
        f"A recipe must be a YAML file path, YAML text (a str with a newline), a dict or a MergeConfig; got "
        f"{type(config).__name__}."
    )


def plan_inputs(mp: Any, recipe: Any = None) -> list[tuple[str, Path]]:
    """Every path a merge reads (models, LoRA adapters, tokenizer source, the recipe file): none of them may
    be, contain or lie inside the output."""
    out: list[tuple[str, Path]] = []
    for key, ck in mp.models.items():
        out.append(("input model", ck.model_dir))  # the directory, also for a model given as one file
        if ck.lora is not None:
            out.append((f"LoRA adapter of {key}", ck.lora.path))
    if mp.tokenizer_dir is not None:
        out.append(("tokenizer source", mp.tokenizer_dir))
    if isinstance(recipe, (str, Path)) and not (isinstance(recipe, str) and "\n" in recipe):
        out.append(("recipe", Path(recipe)))
    return out


def plan(config: Any, *, base_dir: Path | None = None, allow_pickle: bool = False, seed: int | None = None):
    """Validate a recipe against the checkpoints (headers only) and return the MergePlan."""
    from modelmix.planner import build_plan

    cfg, base_dir = _load(config, base_dir)
    return build_plan(cfg, base_dir=base_dir, allow_pickle=allow_pickle, seed=seed)


def merge(
    config: Any,
    out_dir: str | Path,
    *,
    overwrite: bool = False,
    threads: int | None = None,
    device: str = "cpu",
    seed: int | None = None,
    out_shard_size: int = 5 * 10**9,
    allow_pickle: bool = False,
    quiet: bool = True,
    base_dir: Path | None = None,
    protect: Sequence[tuple[str, str | Path]] = (),
) -> MergeResult:
    """Merge per a recipe and write an HF model directory atomically.

    ``config``: a recipe file path, YAML text (a str containing a newline), a dict or a MergeConfig.
    ``protect``: more ``(label, path)`` inputs the output must stay clear of (callers' example files); the
    recipe's models, adapters, tokenizer source and recipe file are always protected.
    """
    from modelmix import interrupt
    from modelmix.devices import check_device
    from modelmix.execute import Executor
    from modelmix.io.aux import aux_bytes, write_aux
    from modelmix.io.outputs import check_output_dir
    from modelmix.io.writer import ModelWriter, OutSpec
    from modelmix.runtime import Progress

    t0 = time.perf_counter()
    device = check_device(device)
    out = Path(out_dir).expanduser()  # as the output checks see it
    mp = plan(config, base_dir=base_dir, allow_pickle=allow_pickle, seed=seed)
    try:  # planning read only headers; the output is checked against every input before anything else
        check_output_dir(out, overwrite=overwrite, inputs=[*plan_inputs(mp, config), *protect])
    except BaseException:
        mp.close()
        raise
    if not quiet:
        show_notes(mp)
    # From here until the output is renamed into place, Ctrl-C (in the main thread) is a request honoured at
    # safe points: every worker and I/O thread is stopped and joined before the temporary directory goes,
    # then KeyboardInterrupt is raised; after the rename it is too late and is ignored (modelmix.interrupt).
    with interrupt.deferred() as intr:
        try:
            intr.check()  # a Ctrl-C during imports and planning, recorded by the CLI's handler
            specs = [OutSpec(t.name, t.out_dtype, t.shape) for t in mp.tasks]
            writer = ModelWriter(out, specs, max_shard_bytes=out_shard_size, overwrite=overwrite,
                                 extra_bytes=aux_bytes(mp))
            try:
                intr.check()
                progress = Progress(writer.total_bytes, len(mp.tasks), quiet=quiet)
                try:
                    Executor(mp, device=device, threads=threads).run(
                        lambda t, x, off: writer.write(t.name, x, off), progress,
                        staging=lambda t, off, n: writer.staging(t.name, off, n), cancel=intr,
                    )
                finally:
                    progress.close()
                intr.check()
                write_aux(mp, writer.path, writer.target, seed)
                writer.commit(intr)  # checks for a pending Ctrl-C once more, right before the rename
            except BaseException:
                writer.abort()
                raise
        finally:
            mp.close()
    return MergeResult(out.absolute(), len(mp.tasks), writer.total_bytes, time.perf_counter() - t0)


def show_notes(mp, limit: int = 10) -> None:
    """Print the plan's non-fatal observations (e.g. tensors missing from some models) to stderr."""
    import sys

    for n in mp.notes[:limit]:
        print(f"note: {n}", file=sys.stderr)
    if len(mp.notes) > limit:
        print(f"note: ... and {len(mp.notes) - limit} more", file=sys.stderr)


def merge_tensors(
    method: str,
    tensors: Sequence[torch.Tensor] | Sequence[Mapping[str, torch.Tensor]],
    base: torch.Tensor | Mapping[str, torch.Tensor] | None = None,
    *,
    seed: int = 0,
    **params: Any,
) -> Any:
    """Merge in memory, without files: a list of tensors -> tensor, or a list of state dicts -> state dict.

    Parameters follow the method's declarations; per-model parameters may be a scalar (broadcast) or a list
    aligned with ``tensors``. Results are float32; integer tensors in state dicts are taken from the first
    input. Random methods use ``seed`` (per tensor name for state dicts, as the file-based merge does).
    """
    from modelmix.methods import get_method
    from modelmix.planner import tensor_seed

    m = get_method(method)
    if len(tensors) == 0:
        raise InputError("merge_tensors needs at least one input.")
    if isinstance(tensors[0], Mapping):
        sds = list(tensors)  # type: ignore[arg-type]
        names = list(sds[0])
        for i, sd in enumerate(sds[1:], 1):
            if set(sd) != set(names):
                diff = sorted(set(sd) ^ set(names))[:3]
                raise InputError(f"State dict {i} has different tensor names from state dict 0 (e.g. {diff}).")
        out = {}
        for name in names:
            first = sds[0][name]
            if not first.is_floating_point():
                out[name] = first.clone()
                continue
            b = base[name] if isinstance(base, Mapping) else None
            out[name] = _merge_one(m, [sd[name] for sd in sds], b, tensor_seed(seed, name), params, name)
        return out
    b = base if isinstance(base, torch.Tensor) or base is None else None
    return _merge_one(m, list(tensors), b, seed, params, "tensor")  # type: ignore[arg-type]


def _merge_one(m, tensors: list[torch.Tensor], base: torch.Tensor | None, seed: int, params: dict, name: str):
    if m.needs_base and base is None:
        raise ConfigError(f'Merge method "{m.name}" needs a base tensor (base=...).')
    ts = [t.float() for t in tensors]
    shapes = {tuple(t.shape) for t in ts} | ({tuple(base.shape)} if base is not None else set())
    if len(shapes) != 1:
        raise InputError(f"Shape mismatch for {name}: {sorted(shapes)}.")
    kwargs = resolve_params(m, len(ts), params)
    if m.random:
        kwargs["seed"] = seed
    return m.fn(ts, base=base.float() if base is not None else None, **kwargs)


def resolve_params(m, n_models: int, params: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments of ``m.fn`` for ``n_models`` inputs: every declared parameter, given or
    default, validated as a recipe's values are (types, choices, bounds, the method's own check), per-model
    ones as lists. Raises ConfigError naming the method and parameter. (Resolve once, call ``m.fn`` per
    tensor: what the in-memory candidate merges do.)"""
    from modelmix.methods.registry import REQUIRED

    known = {p.name for p in m.params}
    unknown = set(params) - known
    if unknown:
        from modelmix.errors import did_you_mean

        u = sorted(unknown)[0]
        raise ConfigError(f'Unknown parameter "{u}" for merge method "{m.name}".{did_you_mean(u, known)}')
    kwargs: dict[str, Any] = {}
    for p in m.params:  # the same validator (types, choices, bounds) as a recipe's values
        v = params.get(p.name, p.default)
        if v is REQUIRED:
            raise ConfigError(f'Merge method "{m.name}" needs parameter "{p.name}".')
        if p.scope == "model":
            v = list(v) if isinstance(v, (list, tuple)) else [v] * n_models
            if len(v) != n_models:
                raise ConfigError(f'Parameter "{p.name}" has {len(v)} values for {n_models} models.')
            if p.name in params:
                v = [_valid(m, p, x) for x in v]
        elif p.name in params:
            v = _valid(m, p, v)
        kwargs[p.name] = v
    if m.check is not None:
        m.check(kwargs)
    return kwargs


def _valid(m, p, value: Any) -> Any:
    """``p.validate(value)``, with the method named in the error (None stays None for optional params)."""
    if value is None and not p.required and p.default is None:
        return None
    try:
        return p.validate(value)
    except ConfigError as e:
        raise ConfigError(f'Merge method "{m.name}", parameter "{p.name}": {e}') from None
