"""The merge agent on the test zoo: the whole run, what it writes, resuming, selection, and bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file

from conftest import run_cli
from modelmix.agent import Agent, Recipe, TrialStore, load_spec, parse_task
from modelmix.agent.core import SHORTLIST
from modelmix.errors import ConfigError, DataError, InputError, OutputError

pytest.importorskip("optuna")

TASKS = ("addition", "reverse")


def _spec(zoo: Path, models=None, budget: int = 6, **kw):
    models = models or [zoo / "experts" / t for t in TASKS]
    tasks = [(t, zoo / "tasks" / t / "validation.jsonl", "exact_match", 1.0) for t in TASKS]
    return load_spec(zoo / "base", models, tasks, general=zoo / "tasks" / "general" / "validation.jsonl",
                     budget=budget, seed=0, low_examples=4, **kw)


@pytest.fixture(scope="module")
def first_run(zoo_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("agent")
    with TrialStore(tmp / "agent.db") as store:
        res = Agent(_spec(zoo_dir), store).run(tmp / "out")
    return tmp, res


def test_run_writes_the_model_its_recipe_and_a_report(first_run, zoo_dir, tmp_path):
    tmp, res = first_run
    out = tmp / "out"
    for f in ("model.safetensors", "config.json", "recipe.yml", "agent_report.json", "agent_report.md",
              "agent_report.html"):
        assert (out / f).is_file(), f
    # the recipe, merged by `modelmix merge`, is the model the agent wrote, bit for bit
    code, _, err = run_cli("merge", str(out / "recipe.yml"), str(tmp_path / "again"))
    assert code == 0, err
    a, b = load_file(out / "model.safetensors"), load_file(tmp_path / "again" / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    rep = json.loads((out / "agent_report.json").read_text())
    assert rep["chosen"] == res.chosen.to_dict() and rep["decision"].startswith("Chose ")
    assert set(rep["matrix"]) == {*map(str, [zoo_dir / "experts" / t for t in TASKS]), "base"}
    assert rep["search"]["trials"] == 6 and len(rep["task_vectors"]["pairs"]) == 1
    md = (out / "agent_report.md").read_text()
    assert "## Held-out part" in md and "## Selection" in md and "Routing estimate" in md
    page = (out / "agent_report.html").read_text()
    assert page.count("data:image/png;base64,") == 4 and "<table>" in page  # matrix, similarity, trajectory, Pareto
    # the choice: the default proposal, or a recipe shown better on the held-out rows (the bootstrap test below)
    assert rep["holdout"]["chosen"] in [x["recipe"] for x in rep["holdout"]["shortlist"]]


def test_the_search_never_scores_the_held_out_part(first_run, zoo_dir):
    tmp, res = first_run
    spec = _spec(zoo_dir)
    from collections import Counter

    from modelmix.eval.data import load_examples

    for t in spec.tasks:  # every row of the file in exactly one part (the file may repeat a row)
        key = lambda rows: Counter(json.dumps(r, sort_keys=True) for r in rows)  # noqa: E731
        assert key(t.dev) + key(t.holdout) == key(load_examples(t.path)) and len(t.holdout) >= 2
    with TrialStore(tmp / "agent.db") as store:
        rows = store.history(res.run)
    held = [r for r in rows if r["fidelity"] == "holdout"]
    searched = {r["recipe_hash"] for r in rows if r["fidelity"] in ("low", "dev") and r["recipe"]["method"] != "single"}
    held_merges = [r for r in held if r["recipe"]["method"] != "single"]
    # the default proposal, the shortlist and the uniform soup only
    assert 1 <= len(held_merges) <= SHORTLIST + 2
    assert all(r["recipe_hash"] in searched or r["recipe"]["method"] == "linear" for r in held_merges)


def test_rerun_resumes_without_evaluating_again_and_a_seed_reproduces_the_choice(first_run, zoo_dir, tmp_path):
    tmp, res = first_run
    with TrialStore(tmp / "agent.db") as store:
        again = Agent(_spec(zoo_dir), store).run(None)
    assert again.evaluations == 0 and again.chosen.key() == res.chosen.key()
    with TrialStore(tmp_path / "fresh.db") as store:
        fresh = Agent(_spec(zoo_dir), store).run(None)
    assert fresh.evaluations > 0 and fresh.chosen.key() == res.chosen.key()


def test_interrupted_search_keeps_what_it_measured(zoo_dir, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = Agent._record

    def flaky(self, *a, **k):
        ev = real(self, *a, **k)
        calls["n"] += 1  # every call is a computed evaluation
        if calls["n"] == 12:
            raise KeyboardInterrupt
        return ev

    monkeypatch.setattr(Agent, "_record", flaky)
    with TrialStore(tmp_path / "a.db") as store, pytest.raises(KeyboardInterrupt):
        Agent(_spec(zoo_dir), store).run(None)
    monkeypatch.setattr(Agent, "_record", real)
    with TrialStore(tmp_path / "a.db") as store:
        assert len(store.history()) == 12
        resumed = Agent(_spec(zoo_dir), store).run(None)
    with TrialStore(tmp_path / "b.db") as store:
        whole = Agent(_spec(zoo_dir), store).run(None)
    assert resumed.evaluations == whole.evaluations - 12 and resumed.chosen.key() == whole.chosen.key()


def test_selection_drops_a_copy_of_the_base_and_a_duplicate(zoo_dir, tmp_path):
    same = tmp_path / "base-copy"
    shutil.copytree(zoo_dir / "base", same)
    twin = tmp_path / "addition-twin"
    shutil.copytree(zoo_dir / "experts" / "addition", twin)
    models = [zoo_dir / "experts" / t for t in TASKS] + [same, twin]
    with TrialStore(tmp_path / "s.db") as store:
        res = Agent(_spec(zoo_dir, models=models, budget=2), store).run(None)
    sel = res.report["selection"]
    assert str(same) not in sel["kept"] and str(zoo_dir / "experts" / "reverse") in sel["kept"]
    assert (str(twin) in sel["kept"]) != (str(zoo_dir / "experts" / "addition") in sel["kept"])
    why = " ".join(d["why"] for d in sel["decisions"])
    assert "beats the base on no task" in why and "duplicates" in why and "cosine 1.00" in why


def test_recipe_round_trip_and_key():
    r = Recipe("ties", ("/m/a", "/m/b"), {"lambda": 0.5}, {"weight": (1.0, 0.5), "density": (0.3, 0.3)}, 0)
    assert Recipe.from_dict(r.to_dict()) == r and Recipe.from_dict(r.to_dict()).key() == r.key()
    assert r.describe() == "ties(a, b; lambda=0.5; density=0.3; weight=[a:1, b:0.5])"
    y = r.to_mergekit(Path("/m/base"))
    assert y["base_model"] == "/m/base" and y["models"][1]["parameters"] == {"weight": 0.5, "density": 0.3}
    assert "base_model" not in Recipe("linear", ("/m/a", "/m/b"), {}, {"weight": (1.0, 1.0)}).to_mergekit(Path("/b"))


@pytest.mark.parametrize("arg,match", [
    ("math", "expected NAME=PATH"), ("=x.jsonl", "needs a name"), ("m=x.jsonl:bleu", "metric 'bleu'"),
    ("m=x.jsonl:exact_match:heavy", "weight 'heavy'"), ("m=x.jsonl:exact_match:0", "must be positive")])
def test_task_argument_errors(arg, match):
    with pytest.raises(ConfigError, match=match):
        parse_task(arg)


def test_bad_input_is_refused_before_any_work(zoo_dir, tmp_path):
    z = zoo_dir
    tasks = [("addition", z / "tasks" / "addition" / "validation.jsonl", "exact_match", 1.0)]
    with pytest.raises(InputError, match="at least two models"):
        load_spec(z / "base", [z / "experts" / "addition"], tasks)
    with pytest.raises(ConfigError, match="--budget 0"):
        load_spec(z / "base", [z / "experts" / "addition", z / "experts" / "reverse"], tasks, budget=0)
    with pytest.raises(InputError, match="twice"):
        load_spec(z / "base", [z / "experts" / "addition"] * 2, tasks)
    with pytest.raises(InputError, match="does not exist"):
        load_spec(z / "base", [z / "experts" / "addition", tmp_path / "nope"], tasks)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input": "1+1=", "output": "2"}\n{"input": 3\n')
    with pytest.raises(DataError, match="bad.jsonl:2"):
        load_spec(z / "base", [z / "experts" / "addition", z / "experts" / "reverse"], [("t", bad, "exact_match", 1.0)])
    few = tmp_path / "few.jsonl"
    few.write_text('{"input": "1+1=", "output": "2"}\n' * 3)
    with pytest.raises(DataError, match="at least 4"):
        load_spec(z / "base", [z / "experts" / "addition", z / "experts" / "reverse"], [("t", few, "exact_match", 1.0)])
    spec = _spec(z)
    with TrialStore(tmp_path / "x.db") as store, pytest.raises(OutputError):
        Agent(spec, store).run(z / "experts" / "addition", overwrite=True)  # the output on top of an input


def test_incompatible_candidates_are_explained_with_routing_proposed(zoo_dir, tmp_path):
    spec = _spec(zoo_dir, models=[zoo_dir / "experts" / "addition", zoo_dir / "embedders" / "base"])
    with TrialStore(tmp_path / "x.db") as store, pytest.raises(InputError, match="route between them instead"):
        Agent(spec, store).run(None)


def test_cli_run_and_history(zoo_dir, tmp_path):
    z = zoo_dir
    args = ["agent", "run", "--base", str(z / "base"), "--models", str(z / "experts" / "addition"),
            "--models", str(z / "experts" / "reverse"), "--tasks", f"addition={z / 'tasks/addition/validation.jsonl'}",
            "--tasks", f"reverse={z / 'tasks/reverse/validation.jsonl'}", "--budget", "3",
            "--db", str(tmp_path / "a.db"), "--out", str(tmp_path / "out"), "--json"]
    code, out, err = run_cli(*args)
    assert code == 0, err
    res = json.loads(out.strip().splitlines()[-1])
    assert res["trials"] == 3 and res["chosen"]["method"] and (tmp_path / "out" / "recipe.yml").is_file()
    code, out, err = run_cli("agent", "history", "--db", str(tmp_path / "a.db"))
    assert code == 0 and "holdout" in out and "dev" in out
    code, _, err = run_cli(*args[:-3], "--out", str(tmp_path / "out"))  # exists, no --overwrite
    assert code == 2 and "Traceback" not in err and err.startswith("error: ")
    code, _, err = run_cli("agent", "history", "--db", str(tmp_path / "none.db"))
    assert code == 2 and "no trial store" in err


def test_yaml_config_form_and_its_errors(zoo_dir, tmp_path):
    import yaml

    z = zoo_dir
    cfg = {"base": str(z / "base"), "models": [str(z / "experts" / t) for t in TASKS],
           "tasks": {"addition": {"path": str(z / "tasks/addition/validation.jsonl"), "weight": 2},
                     "reverse": str(z / "tasks/reverse/validation.jsonl")},
           "budget": 2, "db": "a.db", "out": "merged"}
    (tmp_path / "agent.yml").write_text(yaml.safe_dump(cfg))
    code, out, err = run_cli("agent", "run", "--config", str(tmp_path / "agent.yml"), "--json")
    assert code == 0, err
    res = json.loads(out.strip().splitlines()[-1])
    assert res["trials"] == 2 and (tmp_path / "merged" / "recipe.yml").is_file() and (tmp_path / "a.db").is_file()
    rep = json.loads((tmp_path / "merged" / "agent_report.json").read_text())
    assert rep["split"]["addition"]["weight"] == 2.0 and rep["split"]["reverse"]["weight"] == 1.0
    (tmp_path / "bad.yml").write_text(yaml.safe_dump({**cfg, "budgett": 3}))
    code, _, err = run_cli("agent", "run", "--config", str(tmp_path / "bad.yml"))
    err = " ".join(err.split())  # the CLI wraps messages to the terminal's width
    assert code == 2 and 'unknown key "budgett"' in err and 'Did you mean "budget"?' in err
    (tmp_path / "bad2.yml").write_text(yaml.safe_dump({**cfg, "tasks": {"a": {"path": "x.jsonl", "metric": "bleu"}}}))
    code, _, err = run_cli("agent", "run", "--config", str(tmp_path / "bad2.yml"))
    assert code == 2 and "tasks.a.metric: 'bleu'" in " ".join(err.split())
    code, _, err = run_cli("agent", "run", "--base", str(z / "base"))
    assert code == 2 and "needs --models, --tasks, --out" in " ".join(err.split())


def test_paired_bootstrap_keeps_the_default_unless_the_held_out_rows_show_better(zoo_dir, tmp_path):
    from modelmix.agent.core import Evaluation

    with TrialStore(tmp_path / "p.db") as store:
        agent = Agent(_spec(zoo_dir), store)
    same = [1, 0] * 20
    a = Evaluation({"addition": 0.5, "reverse": 0.5}, None, 0.5, 0.0, hits={"addition": same, "reverse": same})
    noisy = [1, 1, 0, 0] * 10  # the same mean on other rows: nothing to tell them apart
    b = Evaluation({"addition": 0.5, "reverse": 0.5}, None, 0.5, 0.0, hits={"addition": noisy, "reverse": noisy})
    assert agent.p_better(b, a) < 0.95 and agent.p_better(a, a) == 0.0  # a tie is not a win
    up = [1] * 40  # every row right where a got half
    c = Evaluation({"addition": 1.0, "reverse": 1.0}, None, 1.0, 0.0, hits={"addition": up, "reverse": up})
    assert agent.p_better(c, a) == 1.0 and agent.p_better(a, c) == 0.0
    one = list(same)
    one[1] = 1  # one row better out of 80: not evidence
    d = Evaluation({"addition": 0.525, "reverse": 0.5}, None, 0.5125, 0.0, hits={"addition": one, "reverse": same})
    assert agent.p_better(d, a) < 0.95


def test_decision_names_the_default_and_the_evidence(first_run):
    _, res = first_run
    h = res.holdout
    assert h["shortlist"][0]["recipe"] == h["default"] and h["shortlist"][0]["p_better"] is None
    assert all(0.0 <= x["p_better"] <= 1.0 for x in h["shortlist"][1:])
    chosen = next(x for x in h["shortlist"] if x["recipe"] == h["chosen"])
    assert chosen["p_better"] is None or chosen["p_better"] >= 0.95
    assert "held-out rows" in res.report["decision"]


def test_ray_executor_makes_the_same_trials_and_choice_as_the_local_one(zoo_dir, tmp_path):
    """--executor ray on a local cluster (2 CPUs, 2 actors): for a seed and a batch size, the same trials in the
    same order, the same scores and the same choice as the local executor evaluating the batches itself."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        with TrialStore(tmp_path / "r.db") as store:
            remote = Agent(_spec(zoo_dir), store, executor="ray", workers=2).run(None)
            rows_r = store.history(remote.run)
    finally:
        ray.shutdown()
    with TrialStore(tmp_path / "l.db") as store:
        local = Agent(_spec(zoo_dir), store, executor="local", batch=2).run(None)
        rows_l = store.history(local.run)
    assert remote.report["executor"] == {"kind": "ray", "workers": 2} and remote.report["search"]["batch"] == 2
    assert remote.chosen.key() == local.chosen.key() and remote.evaluations == local.evaluations
    key = lambda rows: [(r["recipe_hash"], r["fidelity"], round(r["objective"], 9)) for r in rows]  # noqa: E731
    assert key(rows_r) == key(rows_l)  # the same evaluations, recorded in the same order


def test_ray_executor_without_ray_is_a_clear_error(zoo_dir, tmp_path, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_ray(name, *a, **k):
        if name == "ray":
            raise ImportError("no ray here")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with TrialStore(tmp_path / "x.db") as store, pytest.raises(InputError, match=r"modelmix\[ray\]"):
        Agent(_spec(zoo_dir), store, executor="ray").run(None)


def test_on_conflicting_experts_the_agent_recommends_routing_and_its_router_scores_higher(first_run, zoo_dir):
    """The test zoo's addition and reverse experts cannot be merged well (every merge loses most of both skills):
    the agent measures the router it would write on the held-out rows (each query routed by its text, scored
    with the candidate it was sent to), finds it better than its best merge, and writes it."""
    from modelmix.router.config import load_router_config
    from modelmix.router.core import Router

    tmp, res = first_run
    h = res.holdout
    measured = h["router_measured"]
    assert res.recommend_routing and measured["task_mean"] > h["merge_task_mean"] + 0.05
    assert measured["routed_right"] >= 0.9 and measured["task_mean"] <= h["routing_estimate"] + 1e-9
    cfg = load_router_config(tmp / "out" / "router.yml")  # what `modelmix serve --config` reads
    assert cfg.strategy == "single" and [r.name for r in cfg.routes] == list(TASKS)
    assert {cfg.model_path(n) for n in cfg.models} == {zoo_dir / "experts" / t for t in TASKS}
    router = Router(cfg)
    spec = _spec(zoo_dir)
    with TrialStore(tmp / "agent.db") as store:
        hits = {r["recipe"]["models"][0]: r["scores"]["hits"] for r in store.history(res.run)
                if r["fidelity"] == "holdout" and r["recipe"]["method"] == "single"}
    for t in spec.tasks:  # the measured score, recomputed from the written file and the stored per-row hits
        ds = router.route_many([r["input"] for r in t.holdout], strategy="single")
        assert sum(d.routes[0] == t.name for d in ds) / len(ds) >= 0.9
        got = [hits[str(cfg.model_path(d.models[0]))][t.name][i] for i, d in enumerate(ds)]
        assert sum(got) / len(got) == pytest.approx(measured["scores"][t.name])
    assert "router sending each query by its text alone" in res.report["decision"]
    assert "Router measured" in (tmp / "out" / "agent_report.md").read_text()


def test_memory_stays_flat_in_the_number_of_candidates_evaluated(zoo_dir, tmp_path):
    """Every trial merges into the same skeleton: resident memory after the 24th trial is within a fraction of
    one model of the memory after the 6th. Models of 28 MB (float32) so that a copy per trial would show:
    18 leaked copies would be ~500 MB."""
    import shutil

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    src = zoo_dir / "base"
    cfg = LlamaConfig.from_pretrained(src)
    cfg.update({"hidden_size": 384, "intermediate_size": 1024, "num_attention_heads": 6, "num_key_value_heads": 6,
                "head_dim": 64, "num_hidden_layers": 4})
    torch.manual_seed(0)
    base = LlamaForCausalLM(cfg)
    paths = []
    for name in ("base", "a", "b", "c"):
        d = tmp_path / name
        model = base if name == "base" else LlamaForCausalLM(cfg)
        if name != "base":
            model.load_state_dict({k: v + 0.01 * torch.randn_like(v) for k, v in base.state_dict().items()})
        model.save_pretrained(d)
        for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
            shutil.copy(src / f, d / f)
        paths.append(d)
    size = sum(p.numel() * 4 for p in base.parameters())
    assert size > 25e6
    rows = "".join(json.dumps({"input": f"{i}+{i}=", "output": str(2 * i)}) + "\n" for i in range(6))
    (tmp_path / "t.jsonl").write_text(rows)
    spec = load_spec(paths[0], paths[1:], [("t", tmp_path / "t.jsonl", "exact_match", 1.0)], budget=24, seed=0,
                     low_examples=2)
    with TrialStore(tmp_path / "m.db") as store:
        agent = Agent(spec, store)
        agent.run(None)
    rss = agent.trial_rss
    assert len(rss) >= 12  # trials scored in full (the rest pruned)
    growth = rss[-1] - rss[5]
    assert growth < 0.5 * size, f"resident memory grew {growth / 2**20:.0f} MB over {len(rss) - 6} trials"


def test_slerp_and_cocktail_proposals_for_a_pair(first_run, zoo_dir, tmp_path):
    """A pair gets SLERP halfway and LM-Cocktail's weights among the proposals; a SLERP recipe's YAML (the first
    candidate as base_model) merges to exactly the model the agent scored in memory."""
    import yaml

    from modelmix.candidates import Candidates
    from modelmix.weighting.cocktail import compute_weights

    tmp, res = first_run
    rep = res.report
    props = rep["search"]["proposals"]
    assert any(p.startswith("slerp(addition, reverse; t=0.5)") for p in props)
    spec = _spec(zoo_dir)
    rows = [{"input": r["input"], "output": r["output"]} for t in spec.tasks for r in t.dev[: spec.low_examples]]
    want = compute_weights([str(m) for m in spec.models], rows, type="decoder").weights
    assert list(rep["cocktail"]["weights"].values()) == pytest.approx(want)
    assert sum(p.startswith("linear(") for p in props) == 2  # the uniform soup and the cocktail
    r = Recipe("slerp", tuple(str(m) for m in spec.models), {"t": 0.3}, {}, 0)
    cfg = r.to_mergekit(spec.base)
    assert cfg["base_model"] == str(spec.models[0]) and cfg["parameters"] == {"t": 0.3}
    (tmp_path / "s.yml").write_text(yaml.safe_dump(cfg))
    code, _, err = run_cli("merge", str(tmp_path / "s.yml"), str(tmp_path / "s"))
    assert code == 0, err
    written = load_file(tmp_path / "s" / "model.safetensors")
    with Candidates([str(m) for m in spec.models], base=spec.base) as c:
        em = c.skeleton()
        c.merge_into(em, r.method, **r.merge_kwargs({str(m): i for i, m in enumerate(spec.models)}))
        sd = em.model.state_dict()
    assert all(torch_equal(sd[k], written[k]) for k in written)


def torch_equal(a, b) -> bool:
    return bool((a == b).all())


def test_the_last_part_of_the_budget_refines_the_best_method_with_cma_es(zoo_dir, tmp_path):
    with TrialStore(tmp_path / "c.db") as store:
        res = Agent(_spec(zoo_dir, budget=10), store).run(None)
    s = res.report["search"]
    assert s["trials"] == 10 and s["refined"]["trials"] == 3
    tpe = [t for t in s["trajectory"] if t["phase"] == "tpe"]
    cma = [t for t in s["trajectory"] if t["phase"] == "cmaes"]
    assert len(cma) == 3 and len(tpe) == 7  # CMA-ES prunes nothing: each of its trials scored on the whole dev part
    # CMA-ES starts from the best TPE recipe (seeded with that trial and its score), on its method only
    best_tpe = max((t for t in tpe if t["dev"] is not None), key=lambda t: t["dev"])
    assert s["refined"]["from"] == best_tpe["recipe"]
    assert all(t["recipe"].startswith(s["refined"]["method"] + "(") and t["low"] is None for t in cma)
    assert len({t["recipe"] for t in cma}) == 3 and best_tpe["recipe"] not in {t["recipe"] for t in cma}


def test_cma_es_samples_around_the_best_recipe_not_uniformly(zoo_dir, tmp_path, monkeypatch):
    """The refinement's first trials lie near the recipe it starts from (step 0.1 of each knob's range): with the
    best trial added to its study, CMA-ES does not fall back to uniform sampling for its first batch."""
    import optuna

    seen: list[dict] = []
    real_ask = optuna.study.Study.ask

    def ask(self, *a, **k):
        t = real_ask(self, *a, **k)
        if isinstance(self.sampler, optuna.samplers.CmaEsSampler):
            seen.append(t)
        return t

    monkeypatch.setattr(optuna.study.Study, "ask", ask)
    with TrialStore(tmp_path / "c.db") as store:
        res = Agent(_spec(zoo_dir, budget=20), store, batch=3).run(None)
    s = res.report["search"]
    if s["refined"] is None:
        pytest.skip("the best method had fewer than two knobs on this zoo")
    start = next(t for t in s["trajectory"] if t["recipe"] == s["refined"]["from"])
    assert start["phase"] == "tpe" and len(seen) == 6
    first = seen[0].params
    w = [v for k, v in first.items() if k.startswith("w")]
    assert w and all(0.0 <= x <= 1.0 for x in w)
    # every knob of the first CMA-ES batch within 0.35 of its range from the start (uniform would often not be)
    from modelmix.agent.space import trial_params

    x0 = {k: v for k, v in trial_params(Recipe.from_dict(s["refined"]["start"]),
                                         [str(m) for m in _spec(zoo_dir).models]).items() if k != "method"}
    for t in seen[:3]:
        for k, v in t.params.items():
            d = t.distributions[k]
            assert abs(v - x0[k]) <= 0.35 * (d.high - d.low), (k, v, x0[k])


@pytest.mark.parametrize("method", ["task_arithmetic", "ties"])
def test_per_layer_group_weights_merge_in_memory_as_the_engine_merges_their_yaml(zoo_dir, tmp_path, method):
    """A weight per group of layers is a mergekit gradient (weight: [a, b, c]); the in-memory merge the agent
    scores samples it at each tensor's layer exactly as `modelmix merge` does with the YAML it writes."""
    import yaml

    from modelmix.candidates import Candidates

    spec = _spec(zoo_dir)
    models = tuple(str(m) for m in spec.models)
    mp = {"weight": ((0.2, 0.9, 0.5), (1.0, 0.1, 0.6))}
    if method == "ties":
        mp["density"] = (0.5, 0.7)
    r = Recipe(method, models, {"lambda": 0.8} if method != "ties" else {}, mp, 0)
    assert Recipe.from_dict(json.loads(json.dumps(r.to_dict()))) == r and "[0.2 0.9 0.5]" in r.describe()
    cfg = r.to_mergekit(spec.base)
    assert cfg["models"][0]["parameters"]["weight"] == [0.2, 0.9, 0.5]
    (tmp_path / "g.yml").write_text(yaml.safe_dump(cfg))
    code, _, err = run_cli("merge", str(tmp_path / "g.yml"), str(tmp_path / "g"))
    assert code == 0, err
    written = load_file(tmp_path / "g" / "model.safetensors")
    with Candidates(list(models), base=spec.base) as c:
        em = c.skeleton()
        c.merge_into(em, r.method, **r.merge_kwargs({m: i for i, m in enumerate(models)}))
        sd = {k: v.clone() for k, v in em.model.state_dict().items()}
        flat = Recipe(method, models, r.params, {**mp, "weight": (0.2, 1.0)}, 0)  # the first group's values
        c.merge_into(em, flat.method, **flat.merge_kwargs({m: i for i, m in enumerate(models)}))
        sd_flat = em.model.state_dict()
    assert all(torch_equal(sd[k], written[k]) for k in written)
    layer = next(k for k in written if ".layers.1." in k and "q_proj" in k)
    embed = next(k for k in written if "embed_tokens" in k)
    assert torch_equal(sd[embed], sd_flat[embed]) and not torch_equal(sd[layer], sd_flat[layer])


def test_search_with_layer_groups(zoo_dir, tmp_path):
    with TrialStore(tmp_path / "g.db") as store:
        res = Agent(_spec(zoo_dir, budget=10, layer_groups=3), store).run(tmp_path / "out")
    graded = [t for t in res.report["search"]["trajectory"] if "weight=[addition:[" in t["recipe"]]
    assert graded  # searched recipes carry a gradient per candidate (describe: weight=[addition:[a b c], ...])
    code, _, err = run_cli("merge", str(tmp_path / "out" / "recipe.yml"), str(tmp_path / "again"))
    assert code == 0, err
    a, b = load_file(tmp_path / "out" / "model.safetensors"), load_file(tmp_path / "again" / "model.safetensors")
    assert all(torch_equal(a[k], b[k]) for k in a)
    with pytest.raises(ConfigError, match="layer-groups"):
        _spec(zoo_dir, layer_groups=0)
