"""The feedback learner: Thompson sampling re-weights which model serves a route."""

from __future__ import annotations

import random

import pytest

from modelmix.router.learner import Learner


def _simulate(seed: int, quality, steps: int, decay: float = 1.0):
    """One route, two models; returns the model chosen at each step and whether its answer was good."""
    learner = Learner({"arithmetic": ["bad", "good"]}, decay=decay, seed=seed)
    world = random.Random(seed + 1000)
    log = []
    for t in range(steps):
        m = learner.choose("arithmetic")
        p = quality(t)[m]
        score = 1.0 if world.random() < p else 0.0
        learner.update({"arithmetic": 1.0, "chat": 0.0}, [m], score)
        log.append((m, score))
    return learner, log


def test_feedback_moves_traffic_to_the_better_model():
    """The config prefers the worse model; within 200 events the router serves the better one."""
    oracle = 0.9
    rolling = []
    for seed in range(10):
        learner, log = _simulate(seed, lambda t: {"bad": 0.3, "good": 0.9}, 200)
        last = log[-50:]
        rolling.append(sum(s for _, s in last) / len(last))
        assert learner.beliefs()["arithmetic"]["good"]["mean"] > learner.beliefs()["arithmetic"]["bad"]["mean"]
    assert sum(rolling) / len(rolling) >= 0.9 * oracle


def test_a_degrading_model_loses_its_route_with_decay():
    """The good model turns bad half-way; with decay the other one takes over again."""
    q = lambda t: {"bad": 0.3, "good": 0.9} if t < 200 else {"bad": 0.3, "good": 0.05}  # noqa: E731
    fractions = []
    for seed in range(10):
        _, log = _simulate(seed, q, 400, decay=0.97)
        fractions.append(sum(m == "bad" for m, _ in log[-50:]) / 50)
    assert sum(fractions) / len(fractions) >= 0.8


def test_soft_updates_and_health():
    learner = Learner({"a": ["x", "y"], "b": ["y"]}, seed=0)
    learner.update({"a": 0.7, "b": 0.3, "none": 0.0}, ["y"], 1.0)
    b = learner.beliefs()
    assert b["a"]["y"]["alpha"] == pytest.approx(1.7) and b["a"]["y"]["beta"] == 1.0
    assert b["b"]["y"]["alpha"] == pytest.approx(2.3) and b["a"]["x"]["feedback"] == 0
    assert learner.choose("a", healthy={"x"}) == "x" and learner.choose("a", healthy=set()) is None
    assert learner.choose("unknown") is None
    with pytest.raises(ValueError):
        Learner({"a": ["x"]}, decay=0)


def test_history_replay_equals_live_updates():
    events = [({"a": 1.0}, ["x"], 1.0), ({"a": 0.6, "b": 0.4}, ["y"], 0.0), ({"b": 1.0}, ["y"], 0.5)]
    live = Learner({"a": ["x", "y"], "b": ["y"]})
    for e in events:
        live.update(*e)
    assert Learner.from_history({"a": ["x", "y"], "b": ["y"]}, events).beliefs() == live.beliefs()


def test_feedback_on_a_pipeline_teaches_its_steps_routes():
    """A query classified as a pipeline credits the models of its steps' routes, its share split evenly over
    them; the pipeline's own name is not a route and a learner without pipelines would learn nothing."""
    routes = {"reverse": ["rev_a", "rev_b"], "upper": ["up_a", "up_b"], "sort": ["sort_a"]}
    plain = Learner(routes)
    before = plain.beliefs()
    plain.update({"reverse-upper": 1.0}, ["rev_b", "up_b"], 0.0)
    assert plain.beliefs() == before  # the old behaviour: feedback on a pipeline answer was lost

    learner = Learner(routes, pipelines={"reverse-upper": ["reverse", "upper"]})
    learner.update({"reverse-upper": 0.8, "sort": 0.2}, ["rev_b", "up_b"], 1.0)
    b = learner.beliefs()
    assert b["reverse"]["rev_b"]["feedback"] == pytest.approx(0.4)
    assert b["upper"]["up_b"]["feedback"] == pytest.approx(0.4)
    assert b["reverse"]["rev_b"]["alpha"] == pytest.approx(1.4)
    assert b["reverse"]["rev_a"]["feedback"] == 0.0  # not one of the answer's models
    assert b["sort"]["sort_a"]["feedback"] == 0.0  # sort_a did not answer
    # bad pipeline answers move the steps' routes to their other models
    for _ in range(30):
        learner.update({"reverse-upper": 1.0}, ["rev_b", "up_b"], 0.0)
    picks = [learner.choose("reverse") for _ in range(200)]
    assert picks.count("rev_a") > 150


def test_for_config_knows_the_pipelines(tmp_path):
    from modelmix.router.config import RouterConfig

    cfg = RouterConfig.model_validate({
        "models": {"a": {"url": "http://127.0.0.1:9/v1", "model": "a"}, "b": {"url": "http://127.0.0.1:9/v1", "model": "b"}},
        "routes": [{"name": "x", "models": ["a"], "utterances": ["reverse abc"]},
                   {"name": "y", "models": ["b"], "utterances": ["upper abc"]}],
        "pipelines": [{"name": "xy", "utterances": ["reverse abc, then upper"],
                       "steps": [{"route": "x"}, {"route": "y"}]}]})
    learner = Learner.for_config(cfg)
    assert learner.pipelines == {"xy": ["x", "y"]}
    learner.update({"xy": 1.0}, ["a", "b"], 1.0)
    assert learner.beliefs()["x"]["a"]["feedback"] == pytest.approx(0.5)
