"""LM-Cocktail: merge weights computed from a few examples, then a streamed linear merge.

Weights follow LM-Cocktail 0.0.4 (``LM_Cocktail/utils.py``) exactly: each model's mean loss ``L_i`` on the
examples, ``w = softmax(-L / T)``. The loss definitions are reproduced to float rounding:

* decoder (``{"input", "output"}``): ids ``encode(input + " " + output) + [eos]``, the first
  ``len(encode(input))`` positions unscored, truncation at ``max_length``, attention mask ``ids != pad``;
  the loss is the mean over consecutive groups of ``batch_size`` examples of each group's token-mean NLL
  (HF's loss per batch, averaged over batches). Computed by ``modelmix.eval.metrics.score_continuations``
  in length-sorted, dynamically padded batches, then regrouped, so the value does not depend on how we batch.
* encoder (``{"query", "pos": [...], "neg": [...]}``): CLS pooling, L2 normalisation, InfoNCE at
  temperature 0.05 with in-batch negatives over consecutive groups of ``batch_size`` examples, each example
  contributing ``pos[0]`` and ``random.sample(neg, neg_number)`` (a ``random.Random(seed)`` stream, i.e. what
  LM-Cocktail draws after ``random.seed(seed)``); mean of the per-group cross entropies. Every unique text is
  embedded once per model (the reference re-embeds per batch). Examples with fewer than ``neg_number``
  negatives use all of them (the reference crashes).

Why it is faster and leaner than the reference: one model skeleton is loaded and every other model's
weights are copied into it in turn (:class:`modelmix.candidates.Candidates`; peak memory ~ one model + one
state dict, never N), and decoder examples are padded per batch to their own length instead of to 2048
tokens.

``granularity="layer"`` goes beyond the reference: per-group weights (embeddings / blocks of layers / head)
are searched by a gradient-free coordinate search in logit space, starting from the model-level softmax
weights, on a fit split of the examples; candidates are merged in memory into the skeleton (only the groups
that changed are rebuilt, tensor by tensor from the checkpoints). The split holds out every third example
(indices 2, 5, 8, ...; the last one when there are fewer than three). The layer weights are kept only if the
merged model's held-out loss beats the model-level merge's held-out loss; the model-level weights are the
reference's (computed on all examples), which biases the comparison toward the model-level merge.
Layer weights are written through the engine as per-model ``weight`` filter lists (one entry per layer
prefix / non-layer tensor name), which mergekit resolves exactly per tensor.
"""

from __future__ import annotations

import math
import random
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelmix.errors import ConfigError, DataError, InputError

if TYPE_CHECKING:
    from modelmix.candidates import Candidates
    from modelmix.eval.models import EvalModel

TYPES = ("decoder", "encoder")
GRANULARITIES = ("model", "layer")
ENCODER_TEMPERATURE = 0.05  # LM-Cocktail's InfoNCE temperature
PURPOSE = "LM-Cocktail (a weight average)"  # how compatibility errors say why they matter


@dataclass
class CocktailWeights:
    """Weights in the order the models were given; ``losses[i]`` is model i's own loss on the examples.

    For ``granularity="layer"``, ``layer_weights`` maps each group to its per-model weights when the layer
    search won on held-out examples (else None), and ``search`` reports fit/held-out losses of both merges.
    """

    weights: list[float]
    losses: list[float]
    models: list[str]
    granularity: str = "model"
    layer_weights: dict[str, list[float]] | None = None
    search: dict[str, Any] | None = None
    groups: dict[str, list[str]] | None = field(default=None, repr=False)  # group -> tensor-name filters

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"weights": self.weights, "losses": self.losses, "models": self.models}
        if self.granularity == "layer":
            out["granularity"] = "layer"
            out["layer_weights"] = self.layer_weights
            out["search"] = self.search
        return out


# ------------------------------------------------------------------------------------------ validation
def check_models(models: Sequence[str | Path]) -> list[Path]:
    """Resolve model dirs and check they can be merged (:func:`modelmix.io.compat.check_compatible`: same
    tensors/shapes, architecture and vocabulary).

    Reads only headers and JSON, so a bad input fails in well under a second, before any weights are loaded.
    """
    from modelmix.io.checkpoint import Checkpoint
    from modelmix.io.compat import check_compatible

    paths = _model_dirs(models)
    cks = [Checkpoint(str(p)) for p in paths]
    try:
        check_compatible(cks[0], cks[1:], purpose=PURPOSE)
    finally:
        for ck in cks:
            ck.close()
    return paths


def _model_dirs(models: Sequence[str | Path]) -> list[Path]:
    """At least two existing Hugging Face model directories, resolved."""
    if len(models) < 2:
        raise InputError(f"LM-Cocktail needs at least two models to mix, got {len(models)}.")
    paths: list[Path] = []
    for m in models:
        p = Path(m).expanduser()
        if not p.is_dir():
            raise InputError(f"Model directory {p} does not exist." if not p.exists() else f"{p} is not a directory.")
        if not (p / "config.json").is_file():
            raise InputError(f"{p} has no config.json; LM-Cocktail needs Hugging Face model directories.")
        paths.append(p.resolve())
    return paths


def check_weights(weights: Sequence[float], n_models: int) -> list[float]:
    """Validate user-given weights: one per model, finite, non-negative, positive sum (normalised later)."""
    ws = [float(w) for w in weights]
    if len(ws) != n_models:
        raise ConfigError(f"Got {len(ws)} weight(s) for {n_models} models; give exactly one weight per model, in the same order.")
    for i, w in enumerate(ws):
        if not math.isfinite(w) or w < 0:
            raise ConfigError(f"Weight {i + 1} is {w}; LM-Cocktail weights must be finite and non-negative.")
    if sum(ws) <= 0:
        raise ConfigError("The weights sum to 0; at least one model needs a positive weight.")
    return ws


def load_cocktail_examples(examples: str | Path | Sequence[Mapping[str, Any]], kind: str) -> list[dict[str, Any]]:
    """Examples from a JSONL path (errors name file:line) or a list of dicts, validated for ``kind``."""
    from modelmix.eval.data import coerce_examples

    return coerce_examples(examples, kind)


# ------------------------------------------------------------------------------------------ loss functions
class _Scorer:
    """Loss of the skeleton's current weights on a subset of the (pre-tokenised) examples."""

    def __init__(
        self,
        em: EvalModel,
        examples: Sequence[Mapping[str, Any]],
        kind: str,
        *,
        batch_size: int,
        max_length: int,
        neg_number: int,
        seed: int,
        separator: str | None = None,
    ) -> None:
        self.em, self.kind, self.group = em, kind, batch_size
        tok = em.tokenizer
        if separator is None:
            separator = em.separator  # the model's own convention (LM-Cocktail's " " for ordinary models)
        if kind == "decoder":
            # LM-Cocktail preprocess_data_for_llm: encode(input + " " + output) + [eos], prompt = encode(input);
            # the separator is configurable for models trained without that space
            full = tok([e["input"] + separator + e["output"] for e in examples])["input_ids"]
            prompts = tok([e["input"] for e in examples])["input_ids"]
            self.seqs = [(list(ids) + [tok.eos_token_id])[:max_length] for ids in full]
            self.plens = [len(p) for p in prompts]
        else:
            rng = random.Random(seed)
            self.texts: dict[str, int] = {}
            self.items: list[tuple[int, list[int]]] = []  # (query text id, [pos id, neg ids...])
            for e in examples:
                negs = rng.sample(e["neg"], neg_number) if len(e["neg"]) >= neg_number else list(e["neg"])
                ids = [self.texts.setdefault(t, len(self.texts)) for t in [e["query"], e["pos"][0], *negs]]
                self.items.append((ids[0], ids[1:]))
            n_pos = getattr(em.model.config, "max_position_embeddings", None) or max_length
            em.pooling = "cls"  # LM-Cocktail: last_hidden_state[:, 0]
            em.max_seq_length = min(max_length, n_pos)

    def __call__(self, subset: Sequence[int] | None = None) -> float:
        import torch

        idx = list(range(len(self.seqs if self.kind == "decoder" else self.items))) if subset is None else list(subset)
        if self.kind == "decoder":
            from modelmix.eval.metrics import score_continuations

            lp, n = score_continuations(
                self.em, [self.seqs[i] for i in idx], [self.plens[i] for i in idx], mask_pad_ids=True
            )
            nll = (-lp).tolist()
            cnt = n.tolist()
            groups = [
                (sum(nll[j : j + self.group]), sum(cnt[j : j + self.group])) for j in range(0, len(idx), self.group)
            ]
            return sum(s / c if c else math.nan for s, c in groups) / len(groups)
        from modelmix.eval.metrics import embed

        need = sorted({self.items[i][0] for i in idx} | {t for i in idx for t in self.items[i][1]})
        texts = list(self.texts)
        vecs = embed(self.em, [texts[t] for t in need])
        row = {t: r for r, t in enumerate(need)}
        total = 0.0
        n_groups = 0
        for j in range(0, len(idx), self.group):
            chunk = [self.items[i] for i in idx[j : j + self.group]]
            q = vecs[[row[c[0]] for c in chunk]]
            pids = [row[t] for c in chunk for t in c[1]]
            targets, off = [], 0
            for c in chunk:
                targets.append(off)
                off += len(c[1])
            scores = q @ vecs[pids].T / ENCODER_TEMPERATURE
            total += float(torch.nn.functional.cross_entropy(scores.double(), torch.tensor(targets)))
            n_groups += 1
        return total / n_groups


def _softmax(xs: Sequence[float], temperature: float) -> list[float]:
    z = [-x / temperature for x in xs]
    m = max(z)
    e = [math.exp(v - m) for v in z]
    s = sum(e)
    return [v / s for v in e]


# ------------------------------------------------------------------------------------------ public API
def compute_weights(
    models: Sequence[str | Path],
    examples: str | Path | Sequence[Mapping[str, Any]],
    *,
    type: str | None = None,  # noqa: A002 - mirrors the CLI's --type
    temperature: float = 5.0,
    batch_size: int = 2,
    max_length: int = 2048,
    neg_number: int = 7,
    seed: int = 0,
    device: str = "cpu",
    granularity: str = "model",
    budget: int = 40,
    blocks: int = 4,
    separator: str | None = None,
    log: Callable[[str], None] | None = None,
) -> CocktailWeights:
    """LM-Cocktail weights ``softmax(-L / temperature)`` of ``models`` on ``examples`` (see module docstring).

    ``type`` is detected from the first model when None. ``batch_size`` is LM-Cocktail's batch size, which
    defines the loss (mean of per-batch means; in-batch negatives for encoders), not how we batch.
    ``granularity="layer"`` also searches per-group weights with ``budget`` loss evaluations over
    ``blocks`` contiguous blocks of layers plus embeddings and head. ``separator`` joins input and output
    of decoder examples; None takes the model's own convention (``modelmix.eval.models.prompt_separator``:
    LM-Cocktail's space for ordinary models, ``""`` for the modelmix zoo's).
    """
    from modelmix.devices import check_device
    from modelmix.eval.models import describe_dir, kind_of_dir

    device = check_device(device)
    if granularity not in GRANULARITIES:
        raise ConfigError(f"granularity must be one of {', '.join(GRANULARITIES)}, got {granularity!r}.")
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ConfigError(f"temperature must be a positive number, got {temperature}.")
    if batch_size < 1 or max_length < 2 or neg_number < 0 or budget < 0 or blocks < 1:
        raise ConfigError("batch_size and blocks must be >= 1, max_length >= 2, neg_number and budget >= 0.")
    paths = _model_dirs(models)  # compatibility: checked once, by Candidates, before any weight is read
    if type is not None and type not in TYPES:
        raise ConfigError(f"type must be one of {', '.join(TYPES)}, got {type!r}.")
    kind = kind_of_dir(paths[0])
    if type is not None and type != kind:
        raise ConfigError(
            f"--type {type} was given, but {paths[0]} is {'an encoder' if kind == 'encoder' else 'a decoder'} "
            f"({describe_dir(paths[0])}). LM-Cocktail scores decoders by the loss of their outputs and encoders by "
            f"InfoNCE over query/pos/neg examples; use --type {kind} or leave --type out to detect it."
        )
    exs = load_cocktail_examples(examples, kind)
    if granularity == "layer" and len(exs) < 2:
        raise DataError("granularity='layer' needs at least 2 examples (a fit split and a held-out split).")
    say = log or (lambda s: None)
    from modelmix.candidates import Candidates

    # model-level weights read each model once: no cache (memory stays one skeleton + one state dict); the
    # layer search re-reads every group it changes, so it keeps the inputs in memory within the default budget
    with Candidates(paths, purpose=PURPOSE,
                    cache_bytes=0 if granularity == "model" else None) as cands:
        em = cands.skeleton(device, kind=kind, pooling="cls" if kind == "encoder" else None)
        scorer = _Scorer(em, exs, kind, batch_size=batch_size, max_length=max_length, neg_number=neg_number,
                         seed=seed, separator=separator)
        losses: list[float] = []
        for i, p in enumerate(paths):
            if i:
                cands.load(em, i)
            losses.append(float(scorer()))
            say(f"{p}: loss {losses[-1]:.4f}")
        _check_finite(losses, paths, max_length)
        weights = _softmax(losses, temperature)
        res = CocktailWeights(weights, losses, [str(m) for m in models])
        if granularity == "layer":
            _layer_search(res, em, scorer, cands, budget=budget, blocks=blocks, log=say)
    return res


def _check_finite(losses: list[float], paths: Sequence[Path], max_length: int) -> None:
    bad = [str(paths[i]) for i, v in enumerate(losses) if not math.isfinite(v)]
    if bad:
        raise DataError(
            f"The loss of {bad[0]} on the examples is not finite ({losses[list(map(str, paths)).index(bad[0])]}); "
            f"every example was probably truncated away (max_length={max_length}) or the model is broken."
        )


def mix(
    models: Sequence[str | Path],
    out_dir: str | Path,
    weights: Sequence[float] | None = None,
    examples: str | Path | Sequence[Mapping[str, Any]] | None = None,
    *,
    overwrite: bool = False,
    layer_weights: Mapping[str, Sequence[float]] | None = None,
    **kwargs: Any,
) -> Path:
    """Merge ``models`` into ``out_dir`` with given ``weights`` or weights computed from ``examples``.

    ``kwargs`` go to :func:`compute_weights`. The merge is the engine's streaming ``linear`` merge
    (``normalize: true``, output dtype of the inputs). Returns the output directory.
    """
    from modelmix.io.outputs import check_model_output

    out = Path(out_dir)
    ex_file = examples if isinstance(examples, (str, Path)) else None
    check_model_output(out, overwrite=overwrite, models=models, files=[ex_file])  # before any heavy work
    protect = [("examples file", Path(ex_file))] if ex_file is not None else []
    if (weights is None) == (examples is None):
        raise ConfigError("Give either weights (one per model) or examples to compute them from, not both/neither.")
    if weights is not None:
        paths = check_models(models)
        ws = check_weights(weights, len(paths))
        merge_with_weights(paths, out, ws, layer_weights=layer_weights, overwrite=overwrite)
        return out.absolute()
    res = compute_weights(models, examples, **kwargs)  # type: ignore[arg-type]
    merge_with_weights([Path(m) for m in models], out, res.weights, layer_weights=res.layer_weights,
                       groups=res.groups, overwrite=overwrite, protect=protect)
    return out.absolute()


def _input_dtype(path: Path) -> str:
    from modelmix.io.checkpoint import Checkpoint

    ck = Checkpoint(str(path))
    try:
        for n in ck.names():
            dt = ck.entry(n).dtype
            if dt.is_floating_point:
                return str(dt).removeprefix("torch.")
    finally:
        ck.close()
    return "float32"


def recipe(
    models: Sequence[str | Path],
    weights: Sequence[float],
    *,
    layer_weights: Mapping[str, Sequence[float]] | None = None,
    groups: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, Any]:
    """The engine recipe: ``linear`` with ``normalize: true``; layer weights become per-model filter lists."""
    paths = [Path(m) for m in models]
    entries = []
    for i, p in enumerate(paths):
        w: Any = float(weights[i])
        if layer_weights:
            if not groups:
                raise ConfigError("layer_weights need the group -> tensor filter map (groups).")
            # layer prefixes first: a full non-layer name can never shadow them, and vice versa
            order = sorted(layer_weights, key=lambda g: not g.startswith("layers_"))
            w = [{"filter": f, "value": float(layer_weights[g][i])} for g in order for f in groups[g]]
            w.append({"value": float(weights[i])})
        entries.append({"model": str(p.absolute()), "parameters": {"weight": w}})
    return {
        "merge_method": "linear",
        "models": entries,
        "parameters": {"normalize": True},
        "dtype": _input_dtype(paths[0]),
    }


def merge_with_weights(
    models: Sequence[Path],
    out_dir: Path,
    weights: Sequence[float],
    *,
    layer_weights: Mapping[str, Sequence[float]] | None = None,
    groups: Mapping[str, Sequence[str]] | None = None,
    overwrite: bool = False,
    protect: Sequence[tuple[str, str | Path]] = (),
) -> Any:
    """Stream the merge through ``modelmix.api.merge`` (aux files from the first model); every model (even
    one with weight 0) and ``protect`` (the examples file) stay clear of the output."""
    from modelmix import api

    guard = [*[("input model", Path(m)) for m in models], *protect]
    return api.merge(recipe(models, weights, layer_weights=layer_weights, groups=groups), out_dir,
                     overwrite=overwrite, protect=guard)


# ------------------------------------------------------------------------------------------ layer search
def tensor_groups(names: Sequence[str], blocks: int) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """(group -> tensor names, group -> engine filters): embeddings, ``blocks`` blocks of layers, head.

    Layer tensors are recognised by ``<prefix>.(layers|layer|h|blocks|block).<i>.``; other tensors before the
    first layer in checkpoint order or named ``*embed*`` go to ``embeddings``, the rest to ``head``.
    Filters are the layer prefixes (``model.layers.3.``, which is not a substring of ``model.layers.13.``) and
    the full names of non-layer tensors, so the engine resolves exactly the same grouping.
    """
    from modelmix.planner import layer_of as _layer

    layer_of = {n: li for n in names if (li := _layer(n)) is not None}
    n_layers = max((i for _, i in layer_of.values()), default=-1) + 1
    nb = max(1, min(blocks, n_layers)) if n_layers else 0
    members: dict[str, list[str]] = {"embeddings": []}
    filters: dict[str, list[str]] = {"embeddings": []}
    for b in range(nb):
        members[f"layers_{b * n_layers // nb}-{(b + 1) * n_layers // nb - 1}"] = []
    block_names = [g for g in members if g.startswith("layers_")]
    for g in block_names:
        filters[g] = []
    members["head"], filters["head"] = [], []
    seen_layer = False
    for n in names:
        if n in layer_of:
            seen_layer = True
            prefix, i = layer_of[n]
            g = block_names[min(i * nb // n_layers, nb - 1)]
            members[g].append(n)
            f = f"{prefix}.{i}."
            if f not in filters[g]:
                filters[g].append(f)
        else:
            g = "embeddings" if ("embed" in n or "wte" in n or "wpe" in n or not seen_layer) else "head"
            members[g].append(n)
            filters[g].append(n)
    keep = [g for g in members if members[g]]
    return {g: members[g] for g in keep}, {g: filters[g] for g in keep}


class _GroupMerger:
    """Writes weighted sums of the candidates into the skeleton group by group (``linear``, not normalised:
    the weights are a softmax), rebuilding only the groups whose weights changed since the last call."""

    def __init__(self, em: EvalModel, cands: Candidates, members: Mapping[str, Sequence[str]]) -> None:
        self.em, self.cands, self.members = em, cands, members
        self.loaded: dict[str, tuple[float, ...]] = {}

    def apply(self, gw: Mapping[str, Sequence[float]]) -> None:
        for g, ws in gw.items():
            key = tuple(float(w) for w in ws)
            if self.loaded.get(g) != key:
                self.cands.merge_into(self.em, "linear", names=self.members[g], weight=list(key), normalize=False)
                self.loaded[g] = key


def split_indices(n: int) -> tuple[list[int], list[int]]:
    """(fit, held-out): every third example (2, 5, 8, ...) is held out; with n < 3 the last one is."""
    held = [i for i in range(n) if i % 3 == 2] or [n - 1]
    fit = [i for i in range(n) if i not in set(held)]
    return fit, held


def _layer_search(
    res: CocktailWeights,
    em: EvalModel,
    scorer: _Scorer,
    cands: Candidates,
    *,
    budget: int,
    blocks: int,
    log: Callable[[str], None],
) -> None:
    """Coordinate search over per-group logits from the model-level weights; keep the winner on held-out."""
    members, filters = tensor_groups(cands.names, blocks)
    n_models = len(cands)
    n_ex = len(scorer.seqs) if scorer.kind == "decoder" else len(scorer.items)
    fit, held = split_indices(n_ex)
    merger = _GroupMerger(em, cands, members)
    base = {g: list(res.weights) for g in members}
    merger.apply(base)
    model_fit = scorer(fit)
    evals = 1
    logits = {g: [math.log(max(w, 1e-12)) for w in res.weights] for g in members}
    best = model_fit
    step = 1.0
    coords = range(n_models if n_models > 2 else 1)

    def weights_of(z: Mapping[str, Sequence[float]]) -> dict[str, list[float]]:
        return {g: _softmax([-v for v in zs], 1.0) for g, zs in z.items()}

    while evals < budget and step >= 1 / 32:
        improved = False
        for g in members:
            for i in coords:
                for sign in (1.0, -1.0):
                    if evals >= budget:
                        break
                    cand = {k: list(v) for k, v in logits.items()}
                    cand[g][i] += sign * step
                    merger.apply(weights_of(cand))
                    val = scorer(fit)
                    evals += 1
                    if val < best - 1e-7:
                        best, logits, improved = val, cand, True
                        break
        if not improved:
            step /= 2
    layer_w = weights_of(logits)
    merger.apply(layer_w)
    layer_held = scorer(held)
    merger.apply(base)
    model_held = scorer(held)
    keep_layer = layer_held < model_held
    log(f"layer search: {evals} evaluations, fit loss {model_fit:.4f} -> {best:.4f}, "
        f"held-out {model_held:.4f} (model) vs {layer_held:.4f} (layer): keeping {'layer' if keep_layer else 'model'}")
    res.granularity = "layer"
    res.groups = filters
    res.layer_weights = layer_w if keep_layer else None
    res.search = {
        "evaluations": evals,
        "fit_examples": fit,
        "heldout_examples": held,
        "model_level": {"fit_loss": model_fit, "heldout_loss": model_held},
        "layer_level": {"fit_loss": best, "heldout_loss": layer_held, "weights": layer_w},
        "kept": "layer" if keep_layer else "model",
    }


def print_weights(res: CocktailWeights, stream: Any = sys.stdout) -> None:
    """Human-readable table of models, losses and weights."""
    width = max(len(m) for m in res.models)
    for m, loss, w in zip(res.models, res.losses, res.weights, strict=True):
        print(f"{m:<{width}}  loss {loss:8.4f}  weight {w:.4f}", file=stream)
