"""Candidate merges in memory: open a set of models once, merge into one model skeleton, score.

Everything that compares merges before writing one - soups, LM-Cocktail's weights and layer search, LMC
curves, the zoo report, and the agent's search over methods and parameters - runs the same inner loop:
*merge in memory, swap into a loaded model, evaluate*. This module is that loop, once:

* the models (and an optional base) are opened once, headers only, and checked to be combinable
  (:func:`modelmix.io.compat.check_compatible`: architecture, tensor names and shapes, vocabulary) before
  any weight is read;
* tensors are read as float32 on demand and kept in a byte-budgeted cache, so the next candidate re-reads
  nothing (the inputs of a merge are the same whatever its method or parameters); task vectors
  (model - base) are cached the same way;
* a merge runs the engine's pure method functions (the ones ``modelmix.merge_tensors`` and the streaming
  executor's references compute, with parameters validated once by the method's own declarations) tensor
  by tensor straight into the skeleton's parameters: no merged state dict, no disk;
* scoring is ``modelmix.eval.evaluate`` on the skeleton.

Example::

    from modelmix.candidates import Candidates

    with Candidates(["zoo/experts/addition", "zoo/experts/reverse"], base="zoo/base") as c:
        em = c.skeleton()                                  # one loaded model, reused by every candidate
        for density in (0.3, 0.5, 0.7):
            c.merge_into(em, "ties", weight=1.0, density=density)  # the merge, written into em's weights
            print(density, c.score(em, "reverse_val.jsonl", ["exact_match"]))

Results equal ``merge_tensors`` on the same inputs bit for bit (random methods draw per tensor name from
``seed`` exactly as the file-based merge does), so a candidate chosen here is the model ``modelmix merge``
writes.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelmix.errors import InputError

if TYPE_CHECKING:
    import torch

    from modelmix.eval.models import EvalModel
    from modelmix.io.checkpoint import Checkpoint

Model = int | str  # an index into ``Candidates.models`` or the reference it was given as
BASE = "base"  # selects the base model where a model is asked for


def default_cache_bytes() -> int:
    """A quarter of physical memory: the whole tiny/smol zoo, a few 7B models' tensors at a time."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4
    except (ValueError, OSError, AttributeError):
        return 4 << 30


class Candidates:
    """A set of models opened once for in-memory merging and scoring (see the module docstring).

    ``models``: model directories or files (the order is the order methods receive them in); ``base``: the
    base model of task-vector methods (optional; it may also be listed in ``models``). ``what`` and
    ``purpose`` word the errors ("the soup's models", "A soup"). ``cache_bytes``: float32 bytes kept in
    memory between candidates (default :func:`default_cache_bytes`; 0 re-reads every time).
    """

    def __init__(self, models: Sequence[str | Path], *, base: str | Path | None = None, what: str = "models",
                 purpose: str = "Merging in memory", allow_pickle: bool = False,
                 cache_bytes: int | None = None) -> None:
        from modelmix.io.checkpoint import Checkpoint
        from modelmix.io.compat import check_compatible

        if len(models) == 0:
            raise InputError(f"No {what} given.")
        self.models = [str(m) for m in models]
        self.base = None if base is None else str(base)
        self._by_path: dict[Path, Checkpoint] = {}
        self._cks: list[Checkpoint] = []
        self._base_ck: Checkpoint | None = None
        self.cache_bytes = default_cache_bytes() if cache_bytes is None else int(cache_bytes)
        self._cache: dict[tuple[int, str], torch.Tensor] = {}
        self._deltas: dict[tuple[int, str], torch.Tensor] = {}
        self._cached = 0
        self._skeletons: dict[tuple[Any, ...], EvalModel] = {}
        try:
            for ref in self.models:
                self._cks.append(self._open(Checkpoint, ref, allow_pickle))
            self._base_ck = None if base is None else self._open(Checkpoint, str(base), allow_pickle)
            ref_ck = self._base_ck or self._cks[0]
            others = [c for c in dict.fromkeys(self._cks) if c is not ref_ck]  # each file once
            #: floating-point tensor names shared by every model, in the reference model's order
            self.names: list[str] = check_compatible(ref_ck, others, ref_label="the base" if base else "",
                                                     purpose=purpose)
        except BaseException:
            self.close()
            raise
        self._ref = ref_ck

    def _open(self, cls: Any, ref: str, allow_pickle: bool) -> Checkpoint:
        """One Checkpoint per file on disk, whatever path spelled it (the base may be listed as a model)."""
        ck = cls(ref, allow_pickle=allow_pickle)
        key = ck.path.resolve()
        if key in self._by_path:
            ck.close()
            return self._by_path[key]
        self._by_path[key] = ck
        return ck

    # ------------------------------------------------------------------ models and tensors
    def __len__(self) -> int:
        return len(self.models)

    def __enter__(self) -> Candidates:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the files and drop the cache (the skeletons stay usable)."""
        for ck in self._by_path.values():
            ck.close()
        self._cache.clear()
        self._deltas.clear()
        self._cached = 0

    def index(self, model: Model) -> int:
        """The position of ``model`` (an index, or a reference as given; ``"base"`` is -1)."""
        if isinstance(model, int) and not isinstance(model, bool):
            if not 0 <= model < len(self.models):
                raise InputError(f"Model index {model} is out of range for {len(self.models)} models.")
            return model
        if model == BASE:
            if self._base_ck is None:
                raise InputError("These candidates have no base model.")
            return -1
        if str(model) in self.models:
            return self.models.index(str(model))
        if self.base is not None and str(model) == self.base:
            return -1
        raise InputError(f"{model!r} is not one of the candidate models ({', '.join(self.models)}).")

    def checkpoint(self, model: Model) -> Checkpoint:
        return self._ck(self.index(model))

    def _ck(self, i: int) -> Checkpoint:
        return self._base_ck if i == -1 else self._cks[i]  # type: ignore[return-value]

    def path(self, model: Model) -> Path:
        """The model's directory (where its config and tokenizer live)."""
        return self.checkpoint(model).model_dir

    def entry(self, name: str, model: Model | None = None) -> Any:
        """A tensor's header (``dtype``, ``shape``, ``numel``) in ``model`` (default: the reference model,
        the base if there is one); nothing is read."""
        ck = self._ref if model is None else self.checkpoint(model)
        return ck.entry(name)

    def tensor(self, model: Model, name: str) -> torch.Tensor:
        """One tensor as float32 (floating point) or as stored (integers); cached within the budget.

        The returned tensor is shared with the cache: do not modify it in place."""
        return self._tensor(self.index(model), name)

    def _tensor(self, i: int, name: str) -> torch.Tensor:
        t = self._cache.get((i, name))
        if t is None:
            t = self._ck(i).read(name)
            if t.is_floating_point():
                t = t.float()
            self._keep(self._cache, (i, name), t)
        return t

    def task_vector(self, model: Model, name: str) -> torch.Tensor:
        """``model - base`` for one tensor (float32), cached within the budget; do not modify it."""
        i = self.index(model)
        if self._base_ck is None:
            raise InputError("Task vectors need a base model: give Candidates(..., base=...).")
        d = self._deltas.get((i, name))
        if d is None:
            d = self._tensor(i, name) - self._tensor(-1, name)
            self._keep(self._deltas, (i, name), d)
        return d

    def _keep(self, store: dict[tuple[int, str], torch.Tensor], key: tuple[int, str], t: torch.Tensor) -> None:
        n = t.numel() * t.element_size()
        if self._cached + n <= self.cache_bytes:
            store[key] = t
            self._cached += n

    def state_dict(self, model: Model) -> dict[str, torch.Tensor]:
        """Every tensor of one model: floating ones as float32 (fresh tensors, safe to modify)."""
        i = self.index(model)
        ck = self._ck(i)
        out = {}
        for n in ck.names():
            if not ck.entry(n).dtype.is_floating_point:
                out[n] = ck.read(n)
            else:
                t = self._tensor(i, n)
                out[n] = t.clone() if self._cache.get((i, n)) is t else t
        return out

    # ------------------------------------------------------------------ merging
    def _inputs(self, method: Any, models: Iterable[Model] | None, base: Model | None) -> tuple[list[int], int | None]:
        idx = list(range(len(self.models))) if models is None else [self.index(m) for m in models]
        b = None
        if method.uses_base or method.needs_base:
            b = self.index(base) if base is not None else (-1 if self._base_ck is not None else None)
            if method.needs_base and b is None:
                raise InputError(f'Merge method "{method.name}" needs a base model: give Candidates(..., base=...) '
                                 "or merge(..., base=<one of the models>).")
        idx = [i for i in idx if i != b]
        return idx, b

    def merged(self, method: str, *, models: Iterable[Model] | None = None, base: Model | None = None,
               seed: int = 0, names: Iterable[str] | None = None, **params: Any) -> Iterable[tuple[str, torch.Tensor]]:
        """``(name, merged float32 tensor)`` for each tensor (all by default), computed one at a time.

        ``models`` selects and orders the inputs (default all); ``base`` the base (default the candidates'
        base); a model named as base is not also an input. Parameters as for ``merge_tensors``."""
        from modelmix.api import resolve_params
        from modelmix.methods import get_method
        from modelmix.planner import tensor_seed

        m = get_method(method)
        idx, b = self._inputs(m, models, base)
        if len(idx) < m.min_models or (m.max_models is not None and len(idx) > m.max_models):
            most = "" if m.max_models is None else f" and at most {m.max_models}"
            raise InputError(f'Merge method "{m.name}" needs at least {m.min_models}{most} models besides the '
                             f"base; got {len(idx)}.")
        # a per-model value may be a gradient (a list per model, as in a mergekit recipe's `weight: [0.2, 0.8]`):
        # sampled at each tensor's layer position exactly as the engine does (layer i of L at i/(L-1), tensors
        # outside the layers at 0); resolved once per distinct position
        from modelmix.config.params import evaluate, layer_t
        from modelmix.planner import count_layers, layer_index

        grads = {k: v for k, v in params.items() if isinstance(v, (list, tuple))
                 and any(isinstance(x, (list, tuple)) for x in v)}

        def resolve_at(t: float) -> dict[str, Any]:
            return resolve_params(m, len(idx), {**params, **{k: [
                x if isinstance(x, (int, float)) else evaluate(list(x), "", t) for x in v] for k, v in grads.items()}})

        at_t = {0.0: resolve_at(0.0)}  # validated here, before any tensor is read
        todo = self.names if names is None else list(names)
        n_layers = (count_layers(list(self.names)) or 1) if grads else 1

        def kwargs_for(name: str) -> dict[str, Any]:
            t = layer_t(layer_index(name), n_layers) if grads else 0.0
            if t not in at_t:
                at_t[t] = resolve_at(t)
            return at_t[t]

        def run() -> Iterable[tuple[str, torch.Tensor]]:
            for name in todo:
                xs = [self._tensor(i, name) for i in idx]
                bt = self._tensor(b, name) if b is not None else None
                kw = kwargs_for(name)
                kw = {**kw, "seed": tensor_seed(seed, name)} if m.random else kw
                yield name, m.fn(xs, base=bt, **kw)

        return run()

    def merge(self, method: str, **kw: Any) -> dict[str, torch.Tensor]:
        """The merged state dict (float32; integer tensors from the first input) - ``merge_tensors`` on the
        candidates' state dicts, without holding them. Prefer :meth:`merge_into` in a search loop."""
        out = dict(self.merged(method, **kw))
        first = self._cks[0]
        for n in first.names():
            if n not in out:
                out[n] = first.read(n)
        return out

    def merge_into(self, em: EvalModel, method: str, **kw: Any) -> EvalModel:
        """Write the merge into ``em``'s weights in place, tensor by tensor (memory: one tensor's inputs
        beyond the cache). Tensors the skeleton lacks (stale buffers) are skipped. Returns ``em``."""
        import torch

        targets: dict[str, Any] = {}
        with torch.no_grad():
            for name, t in self.merged(method, **kw):
                if name not in targets:
                    targets.update(em.targets([name]))
                dst = targets[name]
                if dst is not None:
                    dst.copy_(t)
        return em

    # ------------------------------------------------------------------ evaluation
    def skeleton(self, device: str = "cpu", *, kind: str | None = None, pooling: str | None = None,
                 separator: str | None = None, model: Model | None = None) -> EvalModel:
        """One loaded float32 model (+ tokenizer) that candidates are merged or copied into; loaded once per
        (device, kind, model), from ``model`` (default: the base, else the first model). ``separator``
        overrides the model's prompt convention when scoring decoder examples."""
        import torch

        from modelmix.eval.models import EvalModel

        src = model if model is not None else (BASE if self._base_ck is not None else 0)
        key = (str(device), kind, pooling, self.index(src))
        em = self._skeletons.get(key)
        if em is None:
            em = EvalModel.from_pretrained(self.path(src), device=device, dtype=torch.float32, kind=kind,
                                           pooling=pooling)
            self._skeletons[key] = em
        if separator is not None:
            em.separator = separator
        return em

    def load(self, em: EvalModel, src: Model | Mapping[str, torch.Tensor]) -> EvalModel:
        """Put one candidate's weights into the skeleton (strict names and shapes, checked before any copy).

        ``src`` is a state dict, or a model (index, reference, ``"base"``): then each tensor is read from its
        file straight into the skeleton's parameter (``preadv``, no intermediate copy) unless it is cached or
        needs a dtype conversion."""
        if isinstance(src, Mapping):
            em.load_state_dict(src)
            return em
        import torch

        from modelmix.eval.loading import read_into

        i = self.index(src)
        ck = self._ck(i)
        keys = em.fit({n: ck.entry(n).shape for n in ck.names()})
        own = em.model.state_dict(keep_vars=True)
        with torch.no_grad():
            for n, k in keys.items():
                if k is None:
                    continue
                cached = self._cache.get((i, n))
                if cached is not None:
                    own[k].copy_(cached)
                else:
                    read_into(ck, n, own[k])
        return em

    @staticmethod
    def score(em: EvalModel, examples: Any, metrics: str | Sequence[str], *, batch_size: int | None = None,
              **kw: Any) -> dict[str, float]:
        """``modelmix.eval.evaluate`` of the skeleton's current weights."""
        from modelmix.eval.api import evaluate

        return evaluate(em, examples, metrics, batch_size=batch_size, **kw)
