"""`modelmix analyze`: constructed task vectors with known answers, a direct torch reference, reports, bad input."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from conftest import make_model
from modelmix.analysis import AnalysisReport, analyze
from modelmix.analysis.findings import derive_findings
from modelmix.cli import app, main
from modelmix.errors import DataError, InputError
from modelmix.planner import layer_index


def _write_like(src: Path, dst: Path, tensors: dict[str, torch.Tensor]) -> None:
    """A copy of model dir ``src`` (config, tokenizer) with the given weights."""
    shutil.copytree(src, dst)
    for f in dst.glob("*.safetensors*"):
        f.unlink()
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(dst / "model.safetensors"))


def _taus(base: Path, models: list[Path]) -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
    b = load_file(str(base / "model.safetensors"))
    out = []
    for m in models:
        sd = {}
        for f in sorted(m.glob("*.safetensors")):
            sd.update(load_file(str(f)))
        out.append({k: sd[k].float() - b[k].float() for k in b})
    return b, out


def _reference(taus: list[dict[str, torch.Tensor]], top_k: float, names: list[str]) -> dict:
    """Direct computation with sorting on the concatenated vectors (per-tensor top-k thresholds)."""
    m = len(taus)
    cat = [torch.cat([t[n].reshape(-1).double() for n in names]) for t in taus]
    sets = []
    for t in taus:
        parts = []
        for n in names:
            a = t[n].reshape(-1).abs()
            k = max(1, int(top_k * a.numel()))
            thr = a.sort(descending=True).values[k - 1]
            parts.append((a >= thr) & (a != 0))
        sets.append(torch.cat(parts))
    ref = {}
    for i in range(m):
        for j in range(i + 1, m):
            both = sets[i] & sets[j]
            opp = both & ((cat[i] < 0) != (cat[j] < 0))
            union = sets[i] | sets[j]
            ref[(i, j)] = {
                "cosine": float(cat[i] @ cat[j] / (cat[i].norm() * cat[j].norm())),
                "conflict_rate": float(opp.sum() / both.sum()) if both.any() else None,
                "jaccard": float(both.sum() / union.sum()) if union.any() else None,
                "shared_topk": int(both.sum()), "conflicts": int(opp.sum()),
            }
    ref["norms"] = [float(c.norm()) for c in cat]
    ref["topk"] = [int(s.sum()) for s in sets]
    return ref


def _pair(rep: AnalysisReport, a: str, b: str) -> dict:
    return next(p for p in rep.data["pairs"] if p["a"] == a and p["b"] == b)


@pytest.fixture
def base(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    return tmp_path / "base", make_model(tmp_path / "base", seed=0, layers=3)


def test_matches_direct_torch_computation(tmp_path: Path, base) -> None:
    bdir, bsd = base
    dirs = []
    for s in (1, 2, 3):
        make_model(tmp_path / f"m{s}", seed=s, like=bsd, layers=3, dtype=torch.bfloat16 if s == 3 else torch.float32,
                   shards=2 if s == 2 else 1)
        dirs.append(tmp_path / f"m{s}")
    rep = analyze(bdir, dirs, top_k=0.3)
    _, taus = _taus(bdir, dirs)
    names = list(taus[0])
    ref = _reference(taus, 0.3, names)
    for i in range(3):
        assert rep.data["models"][i]["norm"] == pytest.approx(ref["norms"][i], rel=1e-5)
        assert rep.data["models"][i]["topk_count"] == ref["topk"][i]
    for i, j in ((0, 1), (0, 2), (1, 2)):
        p = _pair(rep, f"m{i + 1}", f"m{j + 1}")
        r = ref[(i, j)]
        assert p["cosine"] == pytest.approx(r["cosine"], abs=1e-5)
        assert p["shared_topk"] == r["shared_topk"] and p["conflicts"] == r["conflicts"]
        assert p["conflict_rate"] == pytest.approx(r["conflict_rate"], abs=1e-6)
        assert p["jaccard"] == pytest.approx(r["jaccard"], abs=1e-6)
    # per layer: layer 1 alone
    l1 = [n for n in names if layer_index(n) == 1]
    rl = _reference(taus, 0.3, l1)
    lay = next(x for x in rep.data["layers"] if x["layer"] == 1)
    assert lay["pairs"][0]["cosine"] == pytest.approx(rl[(0, 1)]["cosine"], abs=1e-5)
    assert lay["pairs"][0]["conflicts"] == rl[(0, 1)]["conflicts"]
    assert lay["norms"]["m3"] == pytest.approx(rl["norms"][2], rel=1e-5)
    assert [x["label"] for x in rep.data["layers"]] == ["layer 0", "layer 1", "layer 2", "non-layer"]
    assert rep.data["matrices"]["cosine"][0][0] == 1.0


def test_chunked_two_pass_path_is_identical(tmp_path: Path, base) -> None:
    from modelmix.analysis.stats import stream_stats
    from modelmix.io.checkpoint import Checkpoint

    bdir, bsd = base
    for s in (1, 2):
        make_model(tmp_path / f"m{s}", seed=s, like=bsd, layers=3, dtype=torch.bfloat16)
    b = Checkpoint(str(bdir))
    ms = [Checkpoint(str(tmp_path / "m1")), Checkpoint(str(tmp_path / "m2"))]
    whole = stream_stats(b, ms, 0.2, workers=1)
    chunked = stream_stats(b, ms, 0.2, workers=2, keep_bytes=0, chunk_elems=40)
    for n, st in whole.tensors.items():
        c = chunked.tensors[n]
        assert (st.topk, st.both, st.conflict) == (c.topk, c.both, c.conflict), n
        assert st.sq == pytest.approx(c.sq, rel=1e-5) and st.dot[(0, 1)] == pytest.approx(c.dot[(0, 1)], rel=1e-4, abs=1e-9)


def test_identical_task_vectors_near_duplicate(tmp_path: Path, base) -> None:
    bdir, bsd = base
    make_model(tmp_path / "a", seed=7, like=bsd, layers=3)
    make_model(tmp_path / "b", seed=7, like=bsd, layers=3)
    rep = analyze(bdir, [tmp_path / "a", tmp_path / "b"])
    p = _pair(rep, "a", "b")
    assert p["cosine"] == pytest.approx(1.0, abs=1e-6)
    assert p["conflict_rate"] == 0.0 and p["jaccard"] == 1.0
    kinds = [f.kind for f in rep.findings]
    assert "near_duplicate" in kinds
    assert any("near-duplicates" in f.text and "cosine 1.00" in f.text for f in rep.findings)


def test_opposite_task_vectors_conflict_everywhere(tmp_path: Path, base) -> None:
    bdir, bsd = base
    make_model(tmp_path / "up", seed=5, like=bsd, layers=3, delta=0.05)
    make_model(tmp_path / "down", seed=5, like=bsd, layers=3, delta=-0.05)
    rep = analyze(bdir, [tmp_path / "up", tmp_path / "down"])
    p = _pair(rep, "up", "down")
    assert p["conflict_rate"] == 1.0
    assert p["cosine"] == pytest.approx(-1.0, abs=1e-5)
    assert {"opposed", "sign_conflict"} <= {f.kind for f in rep.findings}
    assert any("conflict on 100% of top-20% signs" in f.text for f in rep.findings)


def test_disjoint_supports_have_zero_overlap(tmp_path: Path, base) -> None:
    bdir, bsd = base
    g = torch.Generator().manual_seed(3)
    even, odd = {}, {}
    for n, t in bsd.items():
        idx = torch.arange(t.numel()).reshape(t.shape)
        d = 0.05 * torch.randn(t.shape, generator=g)
        even[n] = t + torch.where(idx % 2 == 0, d, torch.zeros_like(d))
        odd[n] = t + torch.where(idx % 2 == 1, d, torch.zeros_like(d))
    _write_like(bdir, tmp_path / "even", even)
    _write_like(bdir, tmp_path / "odd", odd)
    for top_k in (0.2, 0.9):  # 0.9 > support: the threshold is 0 and zeros must not count as top-k
        rep = analyze(bdir, [tmp_path / "even", tmp_path / "odd"], top_k=top_k)
        p = _pair(rep, "even", "odd")
        assert p["jaccard"] == 0.0 and p["shared_topk"] == 0
        assert p["conflict_rate"] is None
        assert p["cosine"] == pytest.approx(0.0, abs=1e-6)
    assert rep.data["models"][0]["topk_count"] <= sum(t.numel() for t in bsd.values()) // 2 + len(bsd)


def test_json_html_png_outputs_via_cli(tmp_path: Path, base) -> None:
    bdir, bsd = base
    make_model(tmp_path / "a", seed=7, like=bsd, layers=3)
    make_model(tmp_path / "b", seed=7, like=bsd, layers=3)
    make_model(tmp_path / "c", seed=8, like=bsd, layers=3, delta=0.3)
    html, pngs = tmp_path / "r.html", tmp_path / "pngs"
    res = CliRunner().invoke(app, ["analyze", "--base", str(bdir), str(tmp_path / "a"), str(tmp_path / "b"),
                                   str(tmp_path / "c"), "--json", "--html", str(html), "--png-dir", str(pngs),
                                   "--top-k", "0.1"], obj={})
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["schema_version"] == 1 and data["top_k"] == 0.1
    assert {"base", "models", "pairs", "matrices", "layers", "tasks", "lmc", "findings", "n_params",
            "skipped_tensors"} <= set(data)
    assert [m["name"] for m in data["models"]] == ["a", "b", "c"]
    assert set(data["models"][0]) >= {"name", "path", "norm", "relative_norm", "topk_count"}
    assert len(data["pairs"]) == 3 and len(data["matrices"]["cosine"]) == 3
    assert set(data["pairs"][0]) >= {"a", "b", "cosine", "conflict_rate", "jaccard", "shared_topk", "conflicts"}
    assert data["n_params"] == sum(t.numel() for t in bsd.values())
    assert data["tasks"] is None and data["lmc"] is None
    kinds = {f["kind"] for f in data["findings"]}
    assert {"near_duplicate", "norm_imbalance"} <= kinds
    text = html.read_text()
    assert "near-duplicates" in text and text.count("data:image/png;base64,") >= 3
    assert "http://" not in text and "https://" not in text and "<script" not in text
    assert text.index("Findings") < text.index("data:image/png")
    assert sorted(p.name for p in pngs.iterdir()) == ["layers.png", "norms.png", "similarity.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in pngs.iterdir())
    # human-readable output
    res = CliRunner().invoke(app, ["analyze", "--base", str(bdir), str(tmp_path / "a"), str(tmp_path / "c")], obj={})
    assert res.exit_code == 0 and "Findings:" in res.output and "a / c: cosine" in res.output


def _run_main(args: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as e:
        main(args)
    return int(e.value.code), " ".join(capsys.readouterr().err.split())  # undo the CLI's line wrapping


def test_bad_inputs_clear_errors_nothing_written(tmp_path: Path, base, capsys) -> None:
    bdir, bsd = base
    make_model(tmp_path / "a", seed=1, like=bsd, layers=3)
    make_model(tmp_path / "b", seed=2, like=bsd, layers=3)
    make_model(tmp_path / "deep", seed=3, layers=4)
    make_model(tmp_path / "wide", seed=3, layers=3, hidden=24)
    make_model(tmp_path / "vocab", seed=3, layers=3, vocab=40)
    html = tmp_path / "out.html"
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    cases = [
        ([a], "at least two models"),
        ([a, str(tmp_path / "nope")], "not found"),
        ([a, str(tmp_path / "deep")], "not the same architecture"),
        ([a, str(tmp_path / "wide")], "different architecture"),
        ([a, str(tmp_path / "vocab")], "different vocabulary"),
    ]
    for models, msg in cases:
        code, err = _run_main(["analyze", "--base", str(bdir), *models, "--html", str(html)], capsys)
        assert code == 2 and msg in err, (models, err)
        assert "Traceback" not in err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input": "t1", "output": "t2"}\n{"input": "t1"}\n')
    for f, msg in ((empty, "no examples"), (bad, "bad.jsonl:2"), (tmp_path / "missing.jsonl", "does not exist")):
        code, err = _run_main(["analyze", "--base", str(bdir), a, b, "--examples", str(f), "--html", str(html)], capsys)
        assert code == 2 and msg in err, err
    code, err = _run_main(["analyze", "--base", str(bdir), a, b, "--top-k", "0"], capsys)
    assert code == 2 and "top_k" in err
    code, err = _run_main(["analyze", "--base", str(bdir), a, b, "--html", str(tmp_path / "no" / "r.html")], capsys)
    assert code == 2 and "does not exist" in err
    assert not html.exists()
    with pytest.raises(InputError):
        analyze(bdir, [a, str(tmp_path / "wide")])
    with pytest.raises(DataError):
        analyze(bdir, [a, b], examples=[empty])


def test_nan_tensor_is_reported(tmp_path: Path, base) -> None:
    bdir, bsd = base
    make_model(tmp_path / "a", seed=1, like=bsd, layers=3)
    bad = {k: v.clone() for k, v in bsd.items()}
    bad["model.layers.0.mlp.up_proj.weight"][0, 0] = float("nan")
    _write_like(bdir, tmp_path / "b", bad)
    with pytest.raises(InputError, match="up_proj.*NaN"):
        analyze(bdir, [tmp_path / "a", tmp_path / "b"])


def test_findings_thresholds_and_complementarity() -> None:
    def rep(cos, conf, jac, norms=(1.0, 1.0), tasks=None) -> dict:
        pair = {"a": "x", "b": "y", "cosine": cos, "conflict_rate": conf, "jaccard": jac}
        return {"top_k": 0.2, "models": [{"name": n, "norm": v, "relative_norm": 0.01} for n, v in zip("xy", norms, strict=True)],
                "pairs": [pair], "layers": [], "tasks": tasks, "lmc": None}

    kinds = lambda r: [f.kind for f in derive_findings(r)]  # noqa: E731
    assert kinds(rep(0.97, 0.0, 0.9)) == ["near_duplicate"]
    assert kinds(rep(0.05, 0.38, 0.1)) == ["sign_conflict"]
    assert "38% of top-20% signs" in derive_findings(rep(0.05, 0.38, 0.1))[0].text
    assert kinds(rep(0.6, 0.05, 0.2)) == ["sign_agreement"]
    assert kinds(rep(0.2, 0.2, 0.2)) == ["no_issues"]
    assert "norm_imbalance" in kinds(rep(0.2, 0.2, 0.2, norms=(1.0, 4.0)))
    tasks = {"best": {"math": ["x"], "code": ["y"]}, "scores": {"x": {"math": {"loss": 1.0}, "code": {"loss": 2.0}},
                                                             "y": {"math": {"loss": 2.0}, "code": {"loss": 1.0}}},
             "base_loss": {"math": 1.5, "code": 1.5}}
    f = derive_findings(rep(0.2, 0.2, 0.2, tasks=tasks))
    comp = next(x for x in f if x.kind == "complementary")
    assert "x on math" in comp.text and "y on code" in comp.text
    assert {x.kind for x in f} >= {"complementary", "worse_than_base"}
    tasks["best"] = {"math": ["x"], "code": ["x"]}
    assert "dominant" in kinds(rep(0.2, 0.2, 0.2, tasks=tasks))


def test_examples_scores_coverage_and_lmc(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from modelmix.eval._tiny import save_tiny_llama

    bdir = save_tiny_llama(tmp_path / "base", hidden=16, intermediate=32, layers=2, heads=2)
    bsd = load_file(str(bdir / "model.safetensors"))
    for s, name in ((1, "ft1"), (2, "ft2")):
        g = torch.Generator().manual_seed(s)
        _write_like(bdir, tmp_path / name, {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in bsd.items()})
    t1, t2 = tmp_path / "add.jsonl", tmp_path / "copy.jsonl"
    t1.write_text("\n".join(json.dumps({"input": f"{i}+{i}=", "output": str(2 * i)}) for i in range(4)) + "\n")
    t2.write_text("\n".join(json.dumps({"input": f"say {c}:", "output": c}) for c in "abc") + "\n")
    rep = analyze(bdir, [tmp_path / "ft1", tmp_path / "ft2"], examples=[t1, t2], lmc_points=3)
    tasks = rep.data["tasks"]
    assert tasks["names"] == ["add", "copy"]
    for n in ("ft1", "ft2"):
        for t in ("add", "copy"):
            assert math.isfinite(tasks["scores"][n][t]["loss"])
    assert set(tasks["best"]) == {"add", "copy"} and all(tasks["best"].values())
    assert set(tasks["coverage"]) == {"ft1", "ft2"}
    lmc = rep.data["lmc"]
    assert lmc["alphas"] == [0.0, 0.5, 1.0] and lmc["models"] == ["ft1", "ft2"]
    # the path's endpoints are the models themselves
    assert lmc["loss"]["add"][0] == pytest.approx(tasks["scores"]["ft1"]["add"]["loss"], rel=1e-4)
    assert lmc["loss"]["add"][-1] == pytest.approx(tasks["scores"]["ft2"]["add"]["loss"], rel=1e-4)
    assert set(lmc["barrier"]) == {"add", "copy"} and set(lmc["best_alpha"]) == {"add", "copy"}
    html = rep.write_html(tmp_path / "r.html").read_text()
    assert "Tasks (coverage)" in html and html.count("data:image/png;base64,") == 4
    json.dumps(rep.to_json(), allow_nan=False)
