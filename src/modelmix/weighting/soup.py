"""Model soups: uniform and greedy weight averaging scored on held-out examples.

Wortsman et al., "Model soups: averaging weights of multiple fine-tuned models improves accuracy without
increasing inference time", ICML 2022, https://arxiv.org/abs/2203.05482.

* uniform soup: the plain average of all models;
* greedy soup: sort the models by their own held-out score, start from the best, and add each next model
  only if the average of the kept models plus it scores strictly better on the held-out set. The result
  is therefore never worse (on that set) than the best single model.

Candidate soups are never written to disk: they are running sums of float32 state dicts, copied into one
loaded model skeleton of :class:`modelmix.candidates.Candidates` for evaluation, so memory holds the
skeleton plus three state dicts (sum of kept models, candidate, candidate soup) besides the candidates'
tensor cache. Only the final soup goes through the streaming merge engine (a ``linear`` recipe with equal
weights).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelmix.errors import InputError
from modelmix.weighting.common import Log, check_metric, decoder_skeleton, write_linear

if TYPE_CHECKING:
    import torch

    from modelmix.candidates import Candidates

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
    from modelmix.candidates import Candidates
    from modelmix.devices import check_device

    say = log or (lambda _s: None)
    check_metric(metric)
    device = check_device(device)
    if len(models) == 0:
        raise InputError("A soup needs at least one model.")
    if len({str(Path(m)) for m in models}) != len(models):
        raise InputError("The same model is listed twice; each model may appear once in a soup.")
    ex_file = examples if isinstance(examples, (str, Path)) else None
    from modelmix.eval.data import coerce_examples
    from modelmix.eval.models import require_kind
    from modelmix.io.outputs import check_model_output, input_list

    check_model_output(out_dir, overwrite=overwrite, models=models, files=[ex_file])
    for m in models:
        if Path(m).is_dir():
            require_kind(m, "decoder", "A soup (scored by loss or exact match)")
    exs = coerce_examples(examples, "decoder")
    names = [str(m) for m in models]
    with Candidates(models, what="soup's models", purpose="A soup", cache_bytes=0) as cands:  # 3 state dicts
        em = decoder_skeleton(cands, device, separator, "soups")

        def score(sd: dict[str, torch.Tensor]) -> float:
            return cands.score(cands.load(em, sd), exs, [metric], batch_size=batch_size)[metric]

        individual: dict[str, float] = {}
        for i, name in enumerate(names):
            individual[name] = score(cands.state_dict(i))
            say(f"model {name}: {metric} {individual[name]:.6g}")
        trajectory, kept, final_score, acc = _soup(cands, names, individual, score, greedy, metric, say)
    state = _mean(acc, len(kept)) if keep_state_dict else None
    del acc
    result = SoupResult(metric, greedy, individual, kept, final_score, trajectory, None, state)
    if out_dir is not None:
        result.out_dir = write_linear(kept, [1.0] * len(kept), out_dir, overwrite=overwrite,
                                      protect=input_list(files=[ex_file]))
        say(f"wrote the soup of {len(kept)} model(s) to {result.out_dir}")
    return result


def _soup(cands: Candidates, names: list[str], individual: dict[str, float], score: Callable[[Any], float],
          greedy: bool, metric: str, say: Log) -> tuple[list[SoupStep], list[str], float, dict]:
    """(trajectory, kept models, final score, running sum of the kept models' state dicts)."""
    from modelmix.eval.api import higher_is_better, is_better

    trajectory: list[SoupStep] = []
    if greedy:
        order = sorted(range(len(names)), key=lambda i: individual[names[i]], reverse=higher_is_better(metric))
        acc = cands.state_dict(order[0])
        kept = [names[order[0]]]
        best = individual[kept[0]]
        trajectory.append(SoupStep(1, kept[0], best, True, 1))
        say(_step_line(trajectory[-1], metric))
        for step, i in enumerate(order[1:], start=2):
            cand = cands.state_dict(i)
            trial = _mean({k: (v + cand[k] if v.is_floating_point() else v) for k, v in acc.items()}, len(kept) + 1)
            s = score(trial)
            del trial
            keep = is_better(s, best, metric)
            if keep:
                _add_(acc, cand)
                kept.append(names[i])
                best = s
            trajectory.append(SoupStep(step, names[i], s, keep, len(kept)))
            say(_step_line(trajectory[-1], metric))
            del cand
        return trajectory, kept, best, acc
    acc = cands.state_dict(0)
    for i in range(1, len(names)):
        _add_(acc, cands.state_dict(i))
    kept = list(names)
    final_score = score(_mean(acc, len(kept)))
    say(f"uniform soup of {len(kept)} models: {metric} {final_score:.6g}")
    return trajectory, kept, final_score, acc


def _step_line(s: SoupStep, metric: str) -> str:
    return f"step {s.step}: candidate {s.candidate}  soup {metric} {s.score:.6g}  {'kept' if s.kept else 'rejected'}  (size {s.size})"
