"""Linear mode connectivity: endpoint losses, zero self-barrier, --merge-best, PNG/JSON, bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import run_cli
from modelmix.errors import DataError, InputError
from modelmix.eval.api import evaluate
from modelmix.weighting.lmc import barrier_height, grid, lmc_curve

EXAMPLES = [{"input": f"{a}*{b}=", "output": str(a * b)} for a in range(2, 5) for b in range(2)]




def _save(model, tok, d: Path) -> Path:
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """Two unrelated random tiny Llamas (a real barrier) and the held-out file."""
    from modelmix.eval._tiny import make_tiny_llama

    root = tmp_path_factory.mktemp("lmc")
    sds = []
    for i in range(2):
        m, tok = make_tiny_llama(hidden=32, layers=1, heads=2, intermediate=64, seed=i)
        _save(m, tok, root / f"m{i}")
        sds.append({k: v.clone() for k, v in m.state_dict().items()})
    ex = root / "ex.jsonl"
    ex.write_text("\n".join(json.dumps(e) for e in EXAMPLES) + "\n")
    return root, root / "m0", root / "m1", sds, ex


def test_barrier_and_grid_helpers() -> None:
    assert grid(3) == [0.0, 0.5, 1.0]
    assert barrier_height([0, 0.5, 1], [1.0, 3.0, 2.0]) == pytest.approx(1.5)
    assert barrier_height([0, 0.5, 1], [1.0, 0.0, 2.0]) == 0.0  # below the chord: endpoints give 0
    with pytest.raises(InputError, match=">= 2"):
        grid(1)


def test_endpoints_match_independent_eval(pair) -> None:
    _root, a, b, _sds, ex = pair
    res = lmc_curve(a, b, ex, points=3, metric="exact_match")
    assert res.ts == [0.0, 0.5, 1.0]
    ind_a = evaluate(a, ex, ["loss", "exact_match"])
    ind_b = evaluate(b, ex, "loss")
    assert res.losses[0] == pytest.approx(ind_a["loss"], abs=1e-9)
    assert res.losses[-1] == pytest.approx(ind_b["loss"], abs=1e-9)
    assert res.metric_values is not None and res.metric_values[0] == ind_a["exact_match"]
    assert res.barrier == pytest.approx(barrier_height(res.ts, res.losses)) and res.barrier >= 0
    assert res.best_t == res.ts[min(range(3), key=res.losses.__getitem__)]


def test_self_barrier_is_zero(pair) -> None:
    _root, a, _b, _sds, ex = pair
    res = lmc_curve(a, a, ex, points=3)
    assert res.barrier == pytest.approx(0.0, abs=1e-9)
    assert max(res.losses) - min(res.losses) == pytest.approx(0.0, abs=1e-9)


def test_cli_merge_best_png_json(pair, tmp_path: Path) -> None:
    _root, a, b, sds, ex = pair
    png, out = tmp_path / "lmc.png", tmp_path / "best"
    code, stdout, err = run_cli("lmc", str(a), str(b), "--examples", str(ex), "--points", "3", "--json",
                                "--png", str(png), "--merge-best", "--out", str(out))
    assert code == 0, err
    data = json.loads(stdout)
    assert set(data) >= {"ts", "losses", "barrier", "best_t", "chord"} and data["merged"] == str(out)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    t = data["best_t"]
    got = load_file(str(out / "model.safetensors"))
    for k, v in got.items():
        torch.testing.assert_close(v, torch.lerp(sds[0][k], sds[1][k], t), rtol=1e-6, atol=1e-6)
    code, stdout, err = run_cli("lmc", str(a), str(b), "--examples", str(ex), "--points", "2")
    assert code == 0, err
    assert "barrier" in stdout and "best t" in stdout and " 1.000 " in stdout


def test_bad_inputs(pair, tmp_path: Path) -> None:
    from modelmix.eval._tiny import make_tiny_llama

    root, a, b, _sds, ex = pair
    out = tmp_path / "o"
    wide = _save(*make_tiny_llama(hidden=48, layers=1, heads=2, intermediate=64), tmp_path / "wide")
    code, _o, err = run_cli("lmc", str(a), str(wide), "--examples", str(ex), "--merge-best", "--out", str(out))
    assert code == 2 and "shape" in err and not out.exists()
    empty = tmp_path / "e.jsonl"
    empty.write_text("")
    code, _o, err = run_cli("lmc", str(a), str(b), "--examples", str(empty), "--merge-best", "--out", str(out))
    assert code == 2 and "no examples" in err and not out.exists()
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(EXAMPLES[0]) + "\n" + json.dumps({"input": 3, "output": "x"}) + "\n")
    with pytest.raises(DataError, match=r"bad\.jsonl:2"):
        lmc_curve(a, b, bad)
    code, _o, err = run_cli("lmc", str(a), str(b), "--examples", str(ex), "--merge-best")
    assert code == 2 and "--out" in err
    code, _o, err = run_cli("lmc", str(a), str(b), "--examples", str(ex), "--png", str(tmp_path / "no" / "x.png"))
    assert code == 2 and "does not exist" in err
    code, _o, err = run_cli("lmc", str(a), str(root / "nope"), "--examples", str(ex))
    assert code == 2 and "nope" in err
    code, _o, _err = run_cli("lmc", str(a), "--examples", str(ex))
    assert code != 0
    assert not out.exists()
