"""`EvalModel`: a model + tokenizer loaded once, whose weights can be swapped in place.

Merge-weight search evaluates many candidate merges of the same architecture. Re-reading a checkpoint
and rebuilding the module graph for every candidate would dominate the run time, so an `EvalModel` keeps
one skeleton and :meth:`EvalModel.load_state_dict` copies new tensors into the existing parameters
(``Tensor.copy_``: no re-allocation, dtype/device converted on the fly) after a strict name/shape check.

Loading rules (all failures are :class:`~modelmix.errors.InputError`):

* ``kind`` is ``"encoder"`` for a sentence-transformers directory (``modules.json``) or a config without
  a ``*ForCausalLM`` architecture, else ``"decoder"`` (override with ``kind=``).
* encoders are loaded as plain HF ``AutoModel``; pooling comes from the sentence-transformers
  ``Pooling`` module config (``cls`` / ``mean`` / ``max``) when present, else ``cls`` (what LM-Cocktail
  uses); ``max_seq_length`` from ``sentence_bert_config.json`` when present.
* decoders need a tokenizer with an eos token; a missing pad token falls back to eos.
* the tokenizer's vocabulary may not be larger than the model's embedding rows (ids would index past
  the embedding matrix: garbage or a crash mid-evaluation).
* only local directories are accepted (never a hub download).
* on the CPU the skeleton is built from the safetensors directly (``modelmix.eval.loading``: the same tensors
  as ``from_pretrained``, in the skeleton's own memory); anything that path cannot reproduce exactly goes
  through ``from_pretrained``, whose parameters are then copied out of the memory-mapped file.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from modelmix.errors import InputError
from modelmix.eval.loading import IGNORABLE_SUFFIXES as _IGNORABLE_SUFFIXES

POOLINGS = ("cls", "mean", "max")
#: config.json key holding a model's prompt convention: the text between a decoder example's input and output
SEPARATOR_KEY = "modelmix_prompt_separator"
LMCOCKTAIL_SEPARATOR = " "
#: below this many parameters a model evaluates on one torch thread (see ``EvalModel.num_threads``): the
#: zoo's 0.5M-parameter Llamas decode several times faster so, while all-MiniLM-L6-v2 (22.7M) embeds a
#: batch 1.6x faster on two threads than on one (measured for issue 14)
SMALL_MODEL_PARAMS = 5_000_000


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InputError(f"Cannot read {path}: {e}.") from None


def _st_info(path: Path) -> tuple[Path, str | None, int | None]:
    """For a sentence-transformers dir: (transformer dir, pooling, max_seq_length); else (path, None, None)."""
    modules_file = path / "modules.json"
    if not modules_file.is_file():
        return path, None, None
    modules = _read_json(modules_file)
    tdir, pooling, max_len = path, None, None
    for mod in modules if isinstance(modules, list) else []:
        mtype = str(mod.get("type", "")) if isinstance(mod, dict) else ""
        cls_name = mtype.rsplit(".", 1)[
            -1
        ]  # module paths moved in sentence-transformers 5; class names did not
        mpath = path / str(mod.get("path", "")) if isinstance(mod, dict) else path
        if cls_name == "Transformer":
            tdir = mpath
        elif cls_name == "Normalize":
            continue  # cosine similarity normalises anyway
        elif cls_name != "Pooling":
            raise InputError(
                f"{modules_file}: module {mtype!r} is not supported by modelmix eval (only Transformer, Pooling, "
                "Normalize); its embeddings would be computed wrongly."
            )
        else:
            cfg_file = mpath / "config.json"
            cfg = _read_json(cfg_file) if cfg_file.is_file() else {}
            modes = [
                m
                for m in POOLINGS
                if cfg.get(f"pooling_mode_{m}_token" if m == "cls" else f"pooling_mode_{m}_tokens")
            ]
            if "pooling_mode" in cfg:  # sentence-transformers 5 spells it directly
                modes = [str(cfg["pooling_mode"])]
            if len(modes) != 1 or modes[0] not in POOLINGS:
                raise InputError(
                    f"{cfg_file}: unsupported pooling {modes or 'none'}; modelmix eval supports exactly one of "
                    f"{', '.join(POOLINGS)}."
                )
            pooling = modes[0]
    for cand in (tdir / "sentence_bert_config.json", path / "sentence_bert_config.json"):
        if cand.is_file():
            val = _read_json(cand).get("max_seq_length")
            max_len = int(val) if val else None
            break
    return tdir, pooling, max_len


def prompt_separator(model_dir: str | Path) -> str:
    """The text a decoder puts between an example's input and output, as the model itself declares it.

    Scoring a model with a convention it was not trained on measures the convention, not the model (the
    zoo's experts look worse than their base under LM-Cocktail's space). In order:

    1. ``config.json`` key ``modelmix_prompt_separator`` (the zoo writes it; merges copy config.json, so
       merged models keep it);
    2. a model inside a modelmix zoo (a ``zoo.json`` in one of the three directories above it that lists
       the model): ``""``, the zoo's training format ``input + output``;
    3. LM-Cocktail's ``" "``.
    Every scoring command takes ``--separator`` to override it.
    """
    p = Path(model_dir)
    cfg = _config_json(p)
    sep = cfg.get(SEPARATOR_KEY) if isinstance(cfg, dict) else None
    if isinstance(sep, str):
        return sep
    try:
        rp = p.resolve()
        for anc in list(rp.parents)[:3]:
            mf = anc / "zoo.json"
            if mf.is_file():
                models = json.loads(mf.read_text(encoding="utf-8")).get("models") or {}
                if any((anc / str(spec.get("path", ""))).resolve() == rp for spec in models.values()
                       if isinstance(spec, dict) and spec.get("type") == "decoder"):
                    return ""
                break
    except (OSError, ValueError, AttributeError):
        pass
    return LMCOCKTAIL_SEPARATOR


def _config_json(model_dir: Path) -> Any:
    """The parsed config.json of a model directory, or None when it is missing or not JSON."""
    try:
        return json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def kind_of_dir(path: str | Path) -> str:
    """``"encoder"`` or ``"decoder"`` from a model directory's JSON alone (no weights, no transformers): a
    sentence-transformers dir or a config without a ``*ForCausalLM`` architecture is an encoder. Lets a
    command say "this metric needs a decoder" before it validates data or loads anything."""
    from types import SimpleNamespace

    p = Path(path)
    if (p / "modules.json").is_file():
        return "encoder"
    cfg = _config_json(p)
    # the same rule EvalModel.from_pretrained applies to the loaded config
    return _detect_kind(SimpleNamespace(**cfg) if isinstance(cfg, dict) else SimpleNamespace(), False)


def describe_dir(path: str | Path) -> str:
    """What a model directory is, in the words of its config (for error messages)."""
    p = Path(path)
    if (p / "modules.json").is_file():
        return "a sentence-transformers directory"
    cfg = _config_json(p)
    if cfg is None:
        return "no readable config.json"
    if not isinstance(cfg, dict):
        return "a config.json that is not a JSON object"
    archs = cfg.get("architectures") or []
    return f"config architectures {', '.join(archs)}" if archs else f"model_type {cfg.get('model_type')!r}"


def require_kind(path: str | Path, kind: str, what: str) -> None:
    """InputError unless the model at ``path`` is a ``kind`` (``what`` names the metric or command)."""
    have = kind_of_dir(path)
    if have != kind:
        article = "an" if have == "encoder" else "a"
        raise InputError(
            f"{what} needs {'an encoder (embedding model)' if kind == 'encoder' else 'a decoder (causal LM)'}, "
            f"but {path} is {article} {have} ({describe_dir(path)})."
        )


def _detect_kind(config: Any, is_st: bool) -> str:
    if is_st:
        return "encoder"
    archs = getattr(config, "architectures", None) or []
    if any(a.endswith("ForCausalLM") for a in archs):
        return "decoder"
    if getattr(config, "is_encoder_decoder", False) or getattr(config, "is_decoder", False):
        return "decoder"
    return "encoder" if archs else "decoder"


def _load_tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    names = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "tokenizer.model", "vocab.json")
    if not any((path / n).is_file() for n in names):
        raise InputError(
            f"Model directory {path} has no tokenizer (none of {', '.join(names)}); save the tokenizer next "
            "to the weights (tokenizer.save_pretrained) or pass tokenizer=."
        )
    try:
        return AutoTokenizer.from_pretrained(str(path))
    except Exception as e:  # noqa: BLE001 - transformers raises many types; all mean "unusable tokenizer"
        raise InputError(f"Cannot load the tokenizer in {path}: {type(e).__name__}: {e}") from None


def _own_memory(model: Any) -> None:
    """Give every CPU parameter and buffer its own memory: ``from_pretrained`` (transformers 5) leaves them as
    copy-on-write views of the memory-mapped checkpoint, which change if the file is rewritten under a live
    skeleton and fault page by page on the first weight swap."""
    with torch.no_grad():
        for p in model.parameters():
            if p.device.type == "cpu":
                p.data = p.data.clone()
        for module in model.modules():
            for k, b in module._buffers.items():
                if b is not None and b.device.type == "cpu":
                    module._buffers[k] = b.clone()


class EvalModel:
    """A loaded model + tokenizer for evaluation (attributes ``model``, ``tokenizer``, ``kind``).

    Build it with :meth:`from_pretrained` (a local HF / sentence-transformers directory) or
    :meth:`from_model` (an already-loaded transformers model). Encoders also carry ``pooling`` and
    ``max_seq_length``.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        kind: str,
        *,
        pooling: str = "cls",
        max_seq_length: int | None = None,
        name: str | None = None,
        separator: str = LMCOCKTAIL_SEPARATOR,
    ) -> None:
        if kind not in ("decoder", "encoder"):
            raise InputError(f"EvalModel kind must be 'decoder' or 'encoder', got {kind!r}.")
        if pooling not in POOLINGS:
            raise InputError(f"Unknown pooling {pooling!r}; expected one of {', '.join(POOLINGS)}.")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.kind = kind
        self.pooling = pooling
        #: text between input and output when scoring decoder examples (the model's prompt convention)
        self.separator = separator
        self.name = name or str(getattr(model, "name_or_path", "") or type(model).__name__)
        n_emb = model.get_input_embeddings().weight.shape[0]
        if len(tokenizer) > n_emb:
            raise InputError(
                f"Tokenizer of {self.name} has {len(tokenizer)} tokens but the model's embedding matrix has only "
                f"{n_emb} rows; the tokenizer does not belong to this model (or the embeddings were not resized)."
            )
        if max_seq_length is None:
            cfg_max = getattr(model.config, "max_position_embeddings", None) or 2048
            tok_max = getattr(tokenizer, "model_max_length", None) or cfg_max
            max_seq_length = int(min(cfg_max, tok_max, 1 << 20))
        self.max_seq_length = max_seq_length
        if kind == "decoder":
            if tokenizer.eos_token_id is None:
                raise InputError(f"Tokenizer of {self.name} has no eos token; decoder evaluation needs one.")
            if tokenizer.pad_token_id is None:
                tokenizer.pad_token = tokenizer.eos_token
        elif tokenizer.pad_token_id is None:
            raise InputError(f"Tokenizer of {self.name} has no pad token; encoder evaluation needs one.")
        self._token_classes: tuple[Tensor, Tensor, Tensor] | None = None
        #: another forward for ``metrics.embed`` (an ``onnx_encoder.OnnxEncoder``; None: the torch model)
        self.runtime: Any = None
        self._aliases = self._build_aliases()
        n_params = sum(p.numel() for p in model.parameters())
        #: torch intra-op threads while evaluating (None: leave torch's setting). Small models default to 1:
        #: their matmuls are too small to amortise OpenMP synchronisation (one thread decodes a 2M-parameter
        #: Llama several times faster than all cores of a small box).
        self.num_threads: int | None = 1 if n_params < SMALL_MODEL_PARAMS else None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        *,
        kind: str | None = None,
        tokenizer: Any = None,
        pooling: str | None = None,
    ) -> EvalModel:
        """Load a local HF or sentence-transformers directory onto ``device`` in ``dtype``."""
        from modelmix.devices import check_device

        device = check_device(device)
        p = Path(path)
        if not p.is_dir():
            raise InputError(
                f"Model directory {p} does not exist." if not p.exists() else f"{p} is not a directory."
            )
        tdir, st_pooling, st_max = _st_info(p)
        if not (tdir / "config.json").is_file():
            raise InputError(f"{tdir} has no config.json; not a Hugging Face model directory.")
        from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

        try:
            config = AutoConfig.from_pretrained(str(tdir))
        except Exception as e:  # noqa: BLE001
            raise InputError(f"Cannot read the model config in {tdir}: {type(e).__name__}: {e}") from None
        kind = kind or _detect_kind(config, (p / "modules.json").is_file())
        tok = (
            tokenizer
            if tokenizer is not None
            else _load_tokenizer(tdir if tdir != p and _has_tok(tdir) else p)
        )
        auto = AutoModelForCausalLM if kind == "decoder" else AutoModel
        from modelmix.eval.loading import build_model

        model = None
        if torch.device(device).type == "cpu":
            try:
                model = build_model(tdir, auto, config, dtype)
            except Exception:  # noqa: BLE001 - the fast path is an optimisation: from_pretrained decides
                model = None
        if model is None:
            try:
                model = auto.from_pretrained(str(tdir), dtype=dtype)
            except Exception as e:  # noqa: BLE001
                raise InputError(f"Cannot load the {kind} model in {tdir}: {type(e).__name__}: {e}") from None
            model.to(device)
            if torch.device(device).type == "cpu":
                _own_memory(model)
        return cls(
            model, tok, kind, pooling=pooling or st_pooling or "cls", max_seq_length=st_max, name=str(p),
            separator=prompt_separator(tdir),
        )

    @classmethod
    def from_model(
        cls, model: Any, tokenizer: Any = None, *, kind: str | None = None, pooling: str | None = None
    ) -> EvalModel:
        """Wrap an already-loaded transformers model (tokenizer loaded from ``model.name_or_path`` if None)."""
        src = Path(str(getattr(model, "name_or_path", "") or ""))
        st_pooling, st_max = None, None
        if str(src) not in ("", ".") and src.is_dir():
            _, st_pooling, st_max = _st_info(src)
        if tokenizer is None:
            if str(src) in ("", ".") or not src.is_dir():
                raise InputError(
                    "A loaded model was given without tokenizer= and it has no local name_or_path."
                )
            tokenizer = _load_tokenizer(src)
        if kind is None:
            kind = "decoder" if hasattr(model, "generate") and hasattr(model, "lm_head") else None
            kind = kind or _detect_kind(model.config, False)
        sep = prompt_separator(src) if str(src) not in ("", ".") and src.is_dir() else LMCOCKTAIL_SEPARATOR
        return cls(model, tokenizer, kind, pooling=pooling or st_pooling or "cls", max_seq_length=st_max,
                   separator=sep)

    # ------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _build_aliases(self) -> dict[str, list[str]]:
        """Canonical state-dict key -> all keys sharing its storage (tied weights)."""
        groups: dict[tuple[int, int, tuple[int, ...]], list[str]] = {}
        for k, v in self.model.state_dict(keep_vars=True).items():
            key = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape))
            groups.setdefault(key if v.numel() else (id(v), 0, ()), []).append(k)
        return {ks[0]: ks for ks in groups.values()}

    # ------------------------------------------------------------------ weight swapping
    def fit(self, shapes: Mapping[str, Sequence[int]]) -> dict[str, str | None]:
        """Each checkpoint key -> the skeleton's own state-dict key (None: a stale buffer to skip), after the
        strict check :meth:`load_state_dict` describes; raises InputError listing every mismatch."""
        own = self.model.state_dict(keep_vars=True)
        keys = {k: k for k in shapes}
        prefix = getattr(self.model, "base_model_prefix", "") + "."
        if prefix != "." and keys and not any(k in own for k in keys) and all(k.startswith(prefix) for k in keys):
            keys = {k: k[len(prefix) :] for k in keys}
        unexpected = [k for k, o in keys.items() if o not in own and not k.endswith(_IGNORABLE_SUFFIXES)]
        given = set(keys.values())
        missing = [canon for canon, aliases in self._aliases.items() if not any(a in given for a in aliases)]
        bad_shape = [
            f"{o}: got {tuple(shapes[k])}, expected {tuple(own[o].shape)}"
            for k, o in keys.items()
            if o in own and tuple(shapes[k]) != tuple(own[o].shape)
        ]
        if unexpected or missing or bad_shape:
            parts = []
            for label, items in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("shape mismatch", bad_shape),
            ):
                if items:
                    more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
                    parts.append(f"{label}: {', '.join(items[:5])}{more}")
            raise InputError(f"State dict does not fit {self.name}: " + "; ".join(parts) + ".")
        return {k: (o if o in own else None) for k, o in keys.items()}

    def load_state_dict(self, state_dict: Mapping[str, Tensor]) -> None:
        """Copy ``state_dict`` into the existing parameters in place (no re-allocation).

        Every parameter/buffer must be provided exactly once up to tied aliases (e.g. ``lm_head.weight`` may
        be omitted when tied to ``model.embed_tokens.weight``); shapes must match. Keys prefixed with the
        model's ``base_model_prefix`` (``bert.``, ``model.``) are accepted when the skeleton lacks it, and
        stale buffers such as ``*.position_ids`` are ignored. Raises InputError listing all mismatches before
        anything is copied.
        """
        keys = self.fit({k: v.shape for k, v in state_dict.items()})
        own = self.model.state_dict(keep_vars=True)
        with torch.no_grad():
            for k, v in state_dict.items():
                if keys[k] is not None:
                    own[keys[k]].copy_(v)

    def targets(self, names: Sequence[str]) -> dict[str, Tensor | None]:
        """The skeleton's own tensor for each checkpoint tensor name (None when it has none, e.g. a stale
        buffer), accepting names prefixed with ``base_model_prefix`` as :meth:`load_state_dict` does: what
        an in-memory merge writes into, tensor by tensor, without building a state dict."""
        own = self.model.state_dict(keep_vars=True)
        prefix = getattr(self.model, "base_model_prefix", "") + "."
        out: dict[str, Tensor | None] = {}
        for n in names:
            t = own.get(n)
            if t is None and prefix != "." and n.startswith(prefix):
                t = own.get(n[len(prefix):])
            out[n] = t
        return out

    @contextlib.contextmanager
    def threads(self) -> Iterator[None]:
        """Run the body with ``num_threads`` torch threads (restored afterwards); a no-op when None."""
        if self.num_threads is None or self.num_threads == torch.get_num_threads():
            yield
            return
        old = torch.get_num_threads()
        torch.set_num_threads(self.num_threads)
        try:
            yield
        finally:
            torch.set_num_threads(old)

    # ------------------------------------------------------------------ token classes for generation
    def token_classes(self) -> tuple[Tensor, Tensor, Tensor]:
        """Per vocab id: (has newline, newline after non-space text in the token, has non-space text)."""
        if self._token_classes is None:
            n = self.model.get_input_embeddings().weight.shape[0]
            texts = self.tokenizer.batch_decode([[i] for i in range(len(self.tokenizer))])
            has_nl = torch.zeros(n, dtype=torch.bool)
            nl_after = torch.zeros(n, dtype=torch.bool)
            content = torch.zeros(n, dtype=torch.bool)
            for i, t in enumerate(texts):
                j = t.find("\n")
                has_nl[i] = j >= 0
                nl_after[i] = j > 0 and t[:j].strip() != ""
                content[i] = t.strip() != ""
            dev = self.device
            self._token_classes = (has_nl.to(dev), nl_after.to(dev), content.to(dev))
        return self._token_classes


def _has_tok(d: Path) -> bool:
    return any((d / n).is_file() for n in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"))


def as_eval_model(
    model_or_path: Any, *, tokenizer: Any = None, device: str | torch.device = "cpu"
) -> EvalModel:
    """An EvalModel from a path, a loaded transformers model or an EvalModel (returned as-is)."""
    if isinstance(model_or_path, EvalModel):
        return model_or_path
    if isinstance(model_or_path, (str, Path)):
        return EvalModel.from_pretrained(model_or_path, device=device, tokenizer=tokenizer)
    if isinstance(model_or_path, torch.nn.Module):
        return EvalModel.from_model(model_or_path, tokenizer)
    raise InputError(
        f"Expected a model directory, a transformers model or an EvalModel, got {type(model_or_path).__name__}."
    )
