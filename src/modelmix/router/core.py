"""`Router`: a validated config, its encoder and the calibrated classifier, ready to decide."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from modelmix.router.classifier import Classification, IntentClassifier
from modelmix.router.config import RouterConfig, load_router_config
from modelmix.router.decide import Decision, decide


class Router:
    def __init__(self, cfg: RouterConfig, encoder: Any = None, learner: Any = None) -> None:
        from modelmix.eval.models import EvalModel

        self.cfg = cfg
        self.learner = learner  # router.learner.Learner: feedback picks each route's model (None: config order)
        if encoder is None:
            import torch

            encoder = EvalModel.from_pretrained(cfg.encoder_path(), kind="encoder",
                                                dtype=torch.bfloat16 if cfg.encoder_dtype == "bfloat16" else torch.float32)
            if cfg.encoder_dtype == "int8":
                import warnings

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    encoder.model = torch.ao.quantization.quantize_dynamic(encoder.model, {torch.nn.Linear},
                                                                           dtype=torch.qint8)
            attach_runtime(encoder, cfg)
        self.encoder = encoder
        self.classifier = IntentClassifier(
            self.encoder, [(name, us) for name, us, _ in cfg.intents()],
            none_utterances=cfg.none.utterances, background=cfg.none.background,
            thresholds={name: t for name, _, t in cfg.intents()})
        self.fit_report: dict[str, Any] | None = None
        if cfg.calibration is not None:
            from modelmix.router.evaluate import read_labeled

            rows = read_labeled(cfg.calibration_path(), [name for name, _, _ in cfg.intents()])
            self.fit_report = self.classifier.fit([r["query"] for r in rows], [r["route"] for r in rows],
                                                  thresholds={name: t for name, _, t in cfg.intents()})

    @classmethod
    def from_config(cls, source: str | Path | Mapping[str, Any]) -> Router:
        return cls(load_router_config(source))

    @property
    def thresholds(self) -> dict[str, float]:
        return self.classifier.calibration.thresholds

    def classify(self, query: str) -> Classification:
        return self.classifier.classify(query)

    def route(self, query: str, *, strategy: str | None = None, healthy: Iterable[str] | None = None) -> Decision:
        import time

        t0 = time.perf_counter()
        d = self.decide(self.classify(query), strategy=strategy, healthy=healthy)
        d.seconds = time.perf_counter() - t0
        return d

    def decide(self, c: Classification, *, strategy: str | None = None,
               healthy: Iterable[str] | None = None) -> Decision:
        """The decision for a query already classified (the server classifies in batches)."""
        return decide(self.cfg, c, self.thresholds, strategy=strategy, healthy=healthy, learner=self.learner)

    def route_many(self, queries: Sequence[str], **kw: Any) -> list[Decision]:
        return [decide(self.cfg, c, self.thresholds, learner=self.learner, **kw)
                for c in self.classifier.classify_many(queries)]


def attach_runtime(encoder: Any, cfg: RouterConfig) -> None:
    """Give ``encoder`` the ONNX Runtime forward that ``cfg.encoder_runtime`` asks for (see its comment)."""
    if cfg.encoder_runtime == "torch" or cfg.encoder_dtype != "float32":
        return
    from modelmix.errors import ConfigError
    from modelmix.eval.onnx_encoder import OnnxEncoder, unsupported

    why = unsupported(encoder)
    if why is None:
        encoder.runtime = OnnxEncoder(encoder)
    elif cfg.encoder_runtime == "onnx":
        raise ConfigError(f"encoder_runtime: onnx: the encoder {cfg.encoder_path()} cannot run under ONNX Runtime "
                          f"here: {why}. Use encoder_runtime: torch (or auto, which falls back to it).")
