"""`modelmix zoo report` on the test-preset zoo: one full CLI run (spied merges), then checks on it.

The zoo comes from the zoo module's cache (``$MODELMIX_CACHE``, else the user cache dir), as
``tests/test_zoo.py`` does: the first run anywhere trains it (about a minute), later runs copy it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

from modelmix import report as R
from modelmix.errors import ConfigError, InputError, ModelmixError
from modelmix.zoo import load_zoo
from modelmix.zoo.tasks import DECODER_TASKS

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# literal expectations, independent of R.RECIPES: a silent change of the report's defaults fails here
EXPECTED = {
    "soup": {},
    "task_arithmetic": {"weight": 0.3},
    "ties": {"weight": 1.0, "density": 0.2, "normalize": True},
    "dare_ties": {"weight": 1.0, "density": 0.5, "normalize": True},
    "breadcrumbs": {"weight": 0.3, "density": 0.9, "gamma": 0.01},
    "slerp": {"t": 0.5},
    "model_stock": {},
    "subspace": {"weight": 1.0, "lambda": 1.0, "energy": 0.9},
}


@pytest.fixture(scope="module")
def zoo(zoo_dir: Path) -> Path:
    return zoo_dir


@pytest.fixture(scope="module")
def sds(zoo: Path) -> dict[str, dict[str, torch.Tensor]]:
    from modelmix.candidates import Candidates

    z = load_zoo(zoo)
    names = ["base", *z.experts()]
    with Candidates([z.model_path(m) for m in names]) as c:
        return {m: c.state_dict(i) for i, m in enumerate(names)}


def reference(recipe: R.Recipe, experts: list[dict[str, torch.Tensor]], base: dict[str, torch.Tensor]) -> dict:
    """What the report's in-memory merge must equal: ``merge_tensors`` on the state dicts, seed 0."""
    from modelmix import merge_tensors

    if recipe.pair:
        return merge_tensors(recipe.method, [experts[1]], base=experts[0], seed=0, **recipe.params)
    return merge_tensors(recipe.method, experts, base=base, seed=0, **recipe.params)


@pytest.fixture(scope="module")
def run(zoo: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The CLI with every method, --out, --png and --json; merge_recipe is spied to keep the merges."""
    out = tmp_path_factory.mktemp("report")
    merged: list[tuple[str, dict[str, torch.Tensor]]] = []
    real = R.merge_recipe
    mp = pytest.MonkeyPatch()

    def spy(recipe: R.Recipe, cands: Any, em: Any) -> Any:
        out = real(recipe, cands, em)
        merged.append((recipe.method, {k: v.detach().clone() for k, v in em.model.state_dict().items()}))
        return out

    mp.setattr(R, "merge_recipe", spy)
    try:
        res = CliRunner().invoke(R.report_cmd, ["--zoo", str(zoo), "--out", str(out / "r.md"), "--png",
                                                str(out / "r.png"), "--json", "--doc", "-q"])
    finally:
        mp.undo()
    assert res.exit_code == 0, (res.output, res.exception)
    assert res.stdout.count("\n") == 1  # --json: one line on stdout (stderr may carry library bars: the subcommand alone does not quiet them)
    return {"json": json.loads(res.stdout), "md": (out / "r.md").read_text(), "png": out / "r.png",
            "merged": dict(merged)}


def _mean(scores: dict[str, float]) -> float:
    return sum(scores[t] for t in DECODER_TASKS) / len(DECODER_TASKS)


def test_rows_and_ranges(run: dict[str, Any]) -> None:
    d = run["json"]
    assert set(d) == {"rows", "normalized"}
    rows = d["rows"]
    names = list(rows)
    n_models = 1 + len(DECODER_TASKS)
    assert names[:n_models] == ["base", *(f"experts/{t}" for t in DECODER_TASKS)]
    merges = names[n_models:]
    assert [m.split(" ")[0] for m in merges] == list(EXPECTED)
    for sc in rows.values():
        assert set(sc) == {*DECODER_TASKS, "general"}
        for t in DECODER_TASKS:
            assert 0.0 <= sc[t] <= 1.0
        assert 0 < sc["general"] < 50
    # the experts specialise: each is best on its own task among base + experts
    for t in DECODER_TASKS:
        assert rows[f"experts/{t}"][t] == max(rows[n][t] for n in names[:n_models])
    # the test preset's yardstick (recipe 4): some standard merge beats the base on at least three tasks
    standard = [m for m in merges if m.split(" ")[0] in ("soup", "task_arithmetic", "ties", "dare_ties", "breadcrumbs")]
    assert max(sum(rows[m][t] > rows["base"][t] for t in DECODER_TASKS) for m in standard) >= 3
    # normalized accuracy: mean over tasks of merge / that task's expert (tasks whose expert scores 0 left out)
    assert set(d["normalized"]) == set(merges)
    for m in merges:
        parts = [rows[m][t] / rows[f"experts/{t}"][t] for t in DECODER_TASKS if rows[f"experts/{t}"][t]]
        assert d["normalized"][m] == pytest.approx(sum(parts) / len(parts))


def test_fresh_scores_match_manifest(run: dict[str, Any], zoo: Path) -> None:
    """Base/expert rows are measured, and the measurement agrees with the zoo builder's own scorer."""
    man = load_zoo(zoo).scores
    for name, sc in run["json"]["rows"].items():
        if name in man:
            for t in DECODER_TASKS:
                assert sc[t] == pytest.approx(man[name][t]["exact_match"], abs=1e-9)
            assert sc["general"] == pytest.approx(man[name]["general"]["loss"], abs=2e-4)


def test_markdown_and_png(run: dict[str, Any]) -> None:
    md = run["md"]
    assert md.startswith("# Zoo report") and "modelmix zoo report --zoo" in md
    table = [ln for ln in md.splitlines() if ln.startswith("| ") and not ln.startswith("| model")]
    assert len(table) == 1 + len(DECODER_TASKS) + len(EXPECTED)
    for m in EXPECTED:
        assert sum(ln.startswith(f"| **{m}") for ln in table) == 1, m
    for ln in table:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        assert len(cells) == 1 + len(DECODER_TASKS) + 3  # tasks, task mean, normalized, general loss
        assert all(0.0 <= float(c) <= 100.0 for c in cells[1:-2])
        name = cells[0].strip("*")
        if name in run["json"]["normalized"]:
            # the table shows 2 decimals of the value the JSON rounds to 3: half a unit apart at most (0.135 in
            # the JSON can be 0.14 in the table), plus float error at exactly half
            assert float(cells[-2]) == pytest.approx(run["json"]["normalized"][name], abs=0.005 + 1e-9)
        else:
            assert cells[-2] == ""
    assert "**What the table shows.** Best merge by task mean (ties: lower loss): **" in md
    rows = run["json"]["rows"]
    best = max(run["json"]["normalized"], key=lambda m: (_mean(rows[m]), -rows[m]["general"]))
    assert f"**{best}** at {100 * _mean(rows[best]):.1f} %" in md
    assert "beat the base on every task" in md and "Normalized accuracy" in md
    assert run["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and run["png"].stat().st_size > 10_000


def test_merges_equal_merge_tensors(run: dict[str, Any], sds: dict[str, dict[str, torch.Tensor]],
                                    zoo: Path) -> None:
    from modelmix.api import merge_tensors
    from modelmix.eval import EvalModel
    from modelmix.eval.data import load_examples
    from modelmix.eval.metrics import exact_match

    # a few tensors of each kind keep this cheap; per-tensor seeds depend on the name only, so DARE matches
    keys = ["model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight",
            "model.layers.0.input_layernorm.weight", "lm_head.weight"]
    sub = {m: {k: sd[k] for k in keys} for m, sd in sds.items()}
    experts = [sub[f"experts/{t}"] for t in DECODER_TASKS]
    assert list(run["merged"]) == list(EXPECTED)
    for method, params in EXPECTED.items():
        if method == "slerp":
            ref = merge_tensors("slerp", [experts[1]], base=experts[0], **params)
        else:
            ref = merge_tensors(method, experts, base=sub["base"], seed=0, **params)
        got = run["merged"][method]
        assert set(got) == set(sds["base"])
        for k in keys:
            assert torch.equal(got[k], ref[k]), (method, k)
    # and the row reports the score of exactly that state dict
    em = EvalModel.from_pretrained(zoo / "base")
    em.load_state_dict(run["merged"]["ties"])
    ex = load_examples(zoo / "tasks" / "addition" / "test.jsonl", "decoder")
    assert exact_match(em, ex)["exact_match"] == run["json"]["rows"]["ties"]["addition"]


def test_engine_write_matches_in_memory(zoo: Path, sds: dict[str, dict[str, torch.Tensor]], tmp_path: Path) -> None:
    """--write-dir goes through the engine with the same inputs and seed (random DARE masks included)."""
    from safetensors.torch import load_file

    z = load_zoo(zoo)
    names = list(z.experts())
    for m in ("dare_ties", "slerp", "soup"):  # random masks, pair base, a method without base
        R._write_merge(m, R.RECIPES[m], z.model_path("base"), [z.model_path(n) for n in names], tmp_path)
        got = load_file(str(tmp_path / m / "model.safetensors"))
        ref = reference(R.RECIPES[m], [sds[n] for n in names], sds["base"])
        assert set(got) == set(ref)
        for k in ref:
            torch.testing.assert_close(got[k], ref[k], rtol=0, atol=1e-6)
        assert (tmp_path / m / "tokenizer.json").is_file()


def test_bad_inputs(tmp_path: Path, zoo: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(R.report_cmd, ["--zoo", str(tmp_path / "nope")])
    assert res.exit_code != 0 and isinstance(res.exception, InputError)
    assert "is not a model zoo" in str(res.exception) and "modelmix zoo build" in str(res.exception)
    res = runner.invoke(R.report_cmd, ["--zoo", str(zoo), "--methods", "soup,tise"])
    assert isinstance(res.exception, ConfigError) and 'Did you mean "ties"' in str(res.exception)
    with pytest.raises(ModelmixError, match="ending in .png"):
        R.report(zoo, png=tmp_path / "chart.jpg")
    with pytest.raises(ModelmixError, match="does not exist"):
        R.report(zoo, out=tmp_path / "missing" / "r.md")


def test_cocktail_rows(zoo: Path) -> None:
    """--cocktail N: per expert, LM-Cocktail of expert and base from N validation examples, scored like a merge."""
    rep = R.report(zoo, methods=["soup"], cocktail=2)
    z = load_zoo(zoo)
    names = [r.name for r in rep.rows if r.kind == "cocktail"]
    assert names == [f"cocktail({t})" for t in z.experts().values()]
    d = rep.to_json()
    assert set(d) == {"rows", "normalized", "cocktail"} and set(d["cocktail"]) == set(names)
    assert list(d["normalized"]) == ["soup"]
    for r in rep.rows:
        if r.kind == "cocktail":
            assert "weights" in r.detail and "2 " in r.detail
            assert set(r.scores) == {*DECODER_TASKS, "general"}
