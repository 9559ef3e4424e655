"""Build an evaluation skeleton straight from safetensors, without ``from_pretrained``'s machinery.

Why: a skeleton is built once per run, but in a fresh process transformers' ``from_pretrained`` spends
0.1-0.3 s before it reads a byte (key-renaming regexes, loading-report bookkeeping, device maps) and then
leaves the parameters as copy-on-write views of the memory-mapped file. For the small encoders
LM-Cocktail weights are computed for (all-MiniLM-L6-v2: 90 MB, ~0.1 s of forward work per model) that
overhead was a third of the whole computation; and a file-backed parameter changes under the skeleton if
someone rewrites the file, and pays a page fault per 4 KiB on its first write.

What: the module graph is built from the config with parameters on the meta device (buffers, such as
``position_ids`` or rotary frequencies, are real: ``__init__`` computes them), every parameter is then
allocated once in ordinary memory (tied parameters stay one tensor) and filled with ``preadv`` from the
checkpoint. Anything this path does not cover exactly returns None and the caller uses ``from_pretrained``:
no safetensors, remote code, quantisation, a parameter the checkpoint lacks (``from_pretrained`` would
initialise it randomly and warn), a checkpoint tensor the model has no place for (a renamed key), a shape
that differs.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

#: checkpoint keys that are stale buffers, not weights (older BERT exports save position_ids)
IGNORABLE_SUFFIXES = (".position_ids", "rotary_emb.inv_freq")


_patch_lock = threading.Lock()
_patch_depth = 0
_register = torch.nn.Module.register_parameter
_tls = threading.local()


def _on_meta(module: torch.nn.Module, name: str, param: torch.nn.Parameter | None) -> None:
    _register(module, name, param)
    if getattr(_tls, "depth", 0) and param is not None and param.device.type != "meta":
        p = module._parameters[name]
        module._parameters[name] = type(p)(p.to("meta"), requires_grad=p.requires_grad)


@contextlib.contextmanager
def _params_on_meta() -> Iterator[None]:
    """Modules built inside get parameters on the meta device (no memory, no init cost); buffers stay real.

    Only in the calling thread: ``register_parameter`` is patched while any thread is inside (a lock and a
    count install and remove it once), and the patch acts only where this thread-local depth is set, so a
    model another thread builds meanwhile (a server loading two backends at once) is untouched."""
    global _patch_depth
    with _patch_lock:
        if _patch_depth == 0:
            torch.nn.Module.register_parameter = _on_meta  # type: ignore[method-assign]
        _patch_depth += 1
    _tls.depth = getattr(_tls, "depth", 0) + 1
    try:
        yield
    finally:
        _tls.depth -= 1
        with _patch_lock:
            _patch_depth -= 1
            if _patch_depth == 0:
                torch.nn.Module.register_parameter = _register  # type: ignore[method-assign]


def _from_config(auto: Any, config: Any, dtype: torch.dtype) -> Any:
    import transformers

    key = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
    return auto.from_config(config, **{key: dtype})


def build_model(tdir: Path, auto: Any, config: Any, dtype: torch.dtype) -> Any | None:
    """``auto`` (AutoModel / AutoModelForCausalLM) for ``config`` with the weights of ``tdir`` in ``dtype`` on
    the CPU, or None when only ``from_pretrained`` can load it faithfully (see the module docstring)."""
    from modelmix.errors import InputError
    from modelmix.io.checkpoint import Checkpoint

    if getattr(config, "quantization_config", None) or getattr(config, "auto_map", None):
        return None
    if not ((tdir / "model.safetensors").is_file() or (tdir / "model.safetensors.index.json").is_file()):
        return None
    try:
        ck = Checkpoint(str(tdir))
    except InputError:
        return None
    try:
        with _params_on_meta():
            model = _from_config(auto, config, dtype)
        model.tie_weights()
        own = dict(model.named_parameters(remove_duplicate=False))
        bufs = dict(model.named_buffers())
        prefix = getattr(model, "base_model_prefix", "") + "."
        names = [n for n in ck.names() if not n.endswith(IGNORABLE_SUFFIXES)]
        if prefix != "." and names and not any(n in own or n in bufs for n in names):
            keys = {n: n.removeprefix(prefix) for n in names}
        else:
            keys = {n: n for n in names}
        if any(k not in own and k not in bufs for k in keys.values()):
            return None
        covered = {id(own[k]) for k in keys.values() if k in own}
        if any(id(p) not in covered for p in own.values()):
            return None  # from_pretrained would initialise the rest randomly (and warn): let it
        real: dict[int, torch.nn.Parameter] = {}
        for module in model.modules():
            for pname, p in module._parameters.items():
                if p is None:
                    continue
                if id(p) not in real:
                    t = torch.empty(p.shape, dtype=dtype if p.is_floating_point() else p.dtype)
                    real[id(p)] = torch.nn.Parameter(t, requires_grad=p.requires_grad)
                module._parameters[pname] = real[id(p)]
        own = dict(model.named_parameters(remove_duplicate=False))
        for n, k in keys.items():
            dst = own[k] if k in own else bufs[k]
            if tuple(dst.shape) != tuple(ck.entry(n).shape):
                return None
            read_into(ck, n, dst)
        model.eval()
        return model
    finally:
        ck.close()


def read_into(ck: Any, name: str, dst: torch.Tensor) -> None:
    """Fill ``dst`` with checkpoint tensor ``name``: ``preadv`` straight into its memory when the stored
    dtype matches and it is a plain contiguous CPU tensor, else through a temporary (dtype conversion)."""
    with torch.no_grad():
        d = dst.detach()
        if (d.device.type == "cpu" and d.is_contiguous() and d.dtype == ck.entry(name).dtype
                and ck.can_read_into(name)):
            ck.read_into(name, d)
        else:
            d.copy_(ck.read(name))
