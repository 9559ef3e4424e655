"""Model soups: uniform and greedy weight averaging scored on held-out examples.

Wortsman et al., "Model soups: averaging weights of multiple fine-tuned models improves accuracy without
increasing inference time", ICML 2022, https://arxiv.org/abs/2203.05482.

* uniform soup: the plain average of all models;
* greedy soup: sort the models by their own held-out score, start from the best, and add each next model
  only if the average of the kept models plus it scores strictly better on the held-out set. The result
  is therefore never worse (on that set) than the best single model.

Candidate soups are never written to disk: they are running sums of float32 state dicts, copied into one
loaded model skeleton (:meth:`EvalModel.load_state_dict`) for evaluation, so memory holds the skeleton
plus three state dicts (sum of kept models, candidate, candidate soup) however many models there are.
Only the final soup goes through the streaming merge engine (a ``linear`` recipe with equal weights).

The model-loading helpers here are shared with :mod:`modelmix.lmc`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelmix.errors import InputError

if TYPE_CHECKING:
    import torch

    from modelmix.eval.models import EvalModel
    from modelmix.io.checkpoint import Checkpoint

METRICS = ("loss", "exact_match")
Log = Callable[[str], None]


# ------------------------------------------------------------------------------------------ shared helpers
def higher_is_better(metric: str) -> bool:
    return metric != "loss"


def is_better(a: float, b: float, metric: str) -> bool:
    """Is score ``a`` strictly better than ``b`` under ``metric``?"""
    return a > b if higher_is_better(metric) else a < b


def check_metric(metric: str, allowed: Sequence[str] = METRICS) -> str:
    if metric not in allowed:
        from modelmix.errors import did_you_mean

        raise InputError(f"Unknown metric {metric!r}; choose from {', '.join(allowed)}.{did_you_mean(metric, allowed)}")
    return metric


def open_models(models: Sequence[str | Path], *, what: str = "models") -> list[Checkpoint]:
    """Open every model (headers only) and check that they share one architecture: same config
    architecture/model type and the same tensor names and shapes. Raises InputError naming the first
    difference, before any weight is read."""
    from modelmix.io.checkpoint import Checkpoint

    cks = [Checkpoint(str(m)) for m in models]
    ref = cks[0]
    ref_cfg = ref.config()
    for ck in cks[1:]:
        cfg = ck.config()
        for key in ("architectures", "model_type"):
            if key in ref_cfg and key in cfg and ref_cfg[key] != cfg[key]:
                raise InputError(
                    f"The {what} have different architectures: {ref.ref} has {key}={ref_cfg[key]!r} but {ck.ref} "
                    f"has {key}={cfg[key]!r}. Soups and interpolations need models fine-tuned from one architecture."
                )
        a, b = set(ref.entries), set(ck.entries)
        if a != b:
            only_a, only_b = sorted(a - b)[:3], sorted(b - a)[:3]
            raise InputError(
                f"The {what} {ref.ref} and {ck.ref} have different tensors (only in the first: {only_a or 'none'}; "
                f"only in the second: {only_b or 'none'}). They must share one architecture."
            )
        for name in ref.entries:
            sa, sb = tuple(ref.entries[name].shape), tuple(ck.entries[name].shape)
            if sa != sb:
                raise InputError(
                    f"Tensor {name!r} has shape {list(sa)} in {ref.ref} but {list(sb)} in {ck.ref}; the {what} do "
                    "not share one architecture (different sizes or vocabularies)."
                )
    return cks


def read_state_dict(ck: Checkpoint) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint; floating ones as float32 (the precision soups are summed in)."""
    out = {}
    for name in ck.names():
        t = ck.read(name)
        out[name] = t.float() if t.is_floating_point() else t
    return out


def load_skeleton(path: str | Path, device: str = "cpu", separator: str | None = None) -> EvalModel:
    """One float32 model + tokenizer that every candidate's weights are copied into; it scores with the
    model's own prompt convention unless ``separator`` overrides it."""
    from modelmix.eval.models import EvalModel

    em = EvalModel.from_pretrained(path, device=device)
    if em.kind != "decoder":
        raise InputError(f"{path} is not a causal LM; soups and LMC evaluate loss/exact_match of decoders.")
    if separator is not None:
        em.separator = separator
    return em


def score(em: EvalModel, sd: dict[str, torch.Tensor] | None, examples: list[dict[str, Any]], metrics: Sequence[str],
          batch_size: int | None = None) -> dict[str, float]:
    """Copy ``sd`` into the skeleton (None: keep its weights) and evaluate ``metrics`` on ``examples``."""
    from modelmix.eval.api import evaluate

    if sd is not None:
        em.load_state_dict(sd)
    return evaluate(em, examples, list(metrics), batch_size=batch_size)


def check_out(out_dir: str | Path | None, overwrite: bool, models: Sequence[str | Path] = (),
              files: Sequence[str | Path | None] = ()) -> None:
    """Fail on an unusable output location (or one on, in or around an input) before any evaluation."""
    from modelmix.io.outputs import check_model_output

    check_model_output(out_dir, overwrite=overwrite, models=models, files=files)


# ------------------------------------------------------------------------------------------ soups
@dataclass
class SoupStep:
    """One greedy step: the candidate tried, the score of the soup with it, and whether it was kept."""

    step: int
    candidate: str
    score: float
    kept: bool
    size: int  # models in the soup after this step


@dataclass
class SoupResult:
    metric: str
    greedy: bool
    individual: dict[str, float]  # model -> its own held-out score, in input order
    kept: list[str]  # models in the final soup
    score: float  # held-out score of the final soup (float32, in memory)
    trajectory: list[SoupStep] = field(default_factory=list)
    out_dir: Path | None = None
    state_dict: dict[str, Any] | None = None  # the final soup (float32), when keep_state_dict=True


def _add_(acc: dict[str, torch.Tensor], sd: dict[str, torch.Tensor]) -> None:
    for k, v in sd.items():
        if v.is_floating_point():
            acc[k].add_(v)


def _mean(acc: dict[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
    return {k: (v / n if v.is_floating_point() else v) for k, v in acc.items()}


def model_soup(
    models: Sequence[str | Path],
    examples: str | Path | list[dict[str, Any]],
    *,
    greedy: bool = False,
    metric: str = "loss",
    out_dir: str | Path | None = None,
    overwrite: bool = False,
    device: str = "cpu",
    batch_size: int | None = None,
    keep_state_dict: bool = False,
    separator: str | None = None,
    log: Log | None = None,
) -> SoupResult:
    """Uniform (default) or greedy soup of ``models`` scored by ``metric`` on held-out ``examples``.

    ``examples``: a JSONL path or a list of ``{"input", "output"}`` dicts. With ``out_dir`` the final soup
    is written through the streaming engine as an HF directory. A single model is accepted (its soup is
    itself); the CLI asks for two or more. ``log`` receives one line per step (the trajectory).
    ``separator``: text between input and output when scoring (None: the models' own convention).
    """
    from modelmix.devices import check_device

    say = log or (lambda _s: None)
    check_metric(metric)
    device = check_device(device)
    if len(models) == 0:
        raise InputError("A soup needs at least one model.")
    if len({str(Path(m)) for m in models}) != len(models):
        raise InputError("The same model is listed twice; each model may appear once in a soup.")
    ex_file = examples if isinstance(examples, (str, Path)) else None
    check_out(out_dir, overwrite, models, [ex_file])
    from modelmix.eval.data import coerce_examples
    from modelmix.eval.models import require_kind
    from modelmix.io.outputs import input_list

    for m in models:
        if Path(m).is_dir():
            require_kind(m, "decoder", "A soup (scored by loss or exact match)")
    exs = coerce_examples(examples, "decoder")
    cks = open_models(models)
    names = [str(m) for m in models]
    em = load_skeleton(cks[0].model_dir, device, separator)

    individual: dict[str, float] = {}
    for name, ck in zip(names, cks, strict=True):
        individual[name] = score(em, read_state_dict(ck), exs, [metric], batch_size)[metric]
        say(f"model {name}: {metric} {individual[name]:.6g}")

    trajectory: list[SoupStep] = []
    if greedy:
        order = sorted(range(len(names)), key=lambda i: individual[names[i]], reverse=higher_is_better(metric))
        acc = read_state_dict(cks[order[0]])
        kept = [names[order[0]]]
        best = individual[kept[0]]
        trajectory.append(SoupStep(1, kept[0], best, True, 1))
        say(_step_line(trajectory[-1], metric))
        for step, i in enumerate(order[1:], start=2):
            cand = read_state_dict(cks[i])
            trial = _mean({k: (v + cand[k] if v.is_floating_point() else v) for k, v in acc.items()}, len(kept) + 1)
            s = score(em, trial, exs, [metric], batch_size)[metric]
            del trial
            keep = is_better(s, best, metric)
            if keep:
                _add_(acc, cand)
                kept.append(names[i])
                best = s
            trajectory.append(SoupStep(step, names[i], s, keep, len(kept)))
            say(_step_line(trajectory[-1], metric))
            del cand
        final_score = best
    else:
        acc = read_state_dict(cks[0])
        for ck in cks[1:]:
            _add_(acc, read_state_dict(ck))
        kept = list(names)
        final_score = score(em, _mean(acc, len(kept)), exs, [metric], batch_size)[metric]
        say(f"uniform soup of {len(kept)} models: {metric} {final_score:.6g}")
    for ck in cks:
        ck.close()
    state = _mean(acc, len(kept)) if keep_state_dict else None
    del acc
    result = SoupResult(metric, greedy, individual, kept, final_score, trajectory, None, state)
    if out_dir is not None:
        result.out_dir = write_linear(kept, [1.0] * len(kept), out_dir, overwrite=overwrite,
                                      protect=input_list(files=[ex_file]))
        say(f"wrote the soup of {len(kept)} model(s) to {result.out_dir}")
    return result


def _step_line(s: SoupStep, metric: str) -> str:
    return f"step {s.step}: candidate {s.candidate}  soup {metric} {s.score:.6g}  {'kept' if s.kept else 'rejected'}  (size {s.size})"


def write_linear(models: Sequence[str], weights: Sequence[float], out_dir: str | Path, *, overwrite: bool,
                 protect: Sequence[tuple[str, str | Path]] = ()) -> Path:
    """Write ``sum_i w_i model_i / sum_i w_i`` through the streaming engine (a ``linear`` recipe); every
    model (even one with weight 0) and ``protect`` stay clear of the output."""
    from modelmix.api import merge

    recipe = {
        "merge_method": "linear",
        "models": [{"model": str(Path(m).absolute()), "parameters": {"weight": float(w)}}
                   for m, w in zip(models, weights, strict=True) if w != 0 or len(models) == 1],
    }
    guard = [*[("input model", Path(m)) for m in models], *protect]
    return merge(recipe, out_dir, overwrite=overwrite, protect=guard).out_dir
