"""Model soups: one-model soup, uniform = mean, greedy never worse than its best model, bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import run_cli
from modelmix.errors import DataError, InputError, OutputError
from modelmix.eval.api import evaluate
from modelmix.weighting.soup import model_soup

EXAMPLES = [{"input": f"{a}+{b}=", "output": str(a + b)} for a in range(3) for b in range(2)]




def make_family(root: Path, n: int, *, hidden: int = 32, scale: float = 0.02) -> tuple[list[Path], list[dict]]:
    """``n`` tiny char-level Llamas: one random init plus seeded perturbations (fine-tune stand-ins)."""
    from modelmix.eval._tiny import make_tiny_llama

    model, tok = make_tiny_llama(hidden=hidden, layers=1, heads=2, intermediate=2 * hidden, seed=0)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    paths, sds = [], []
    for i in range(n):
        g = torch.Generator().manual_seed(100 + i)
        sd = {k: v + scale * (i + 1) * torch.randn(v.shape, generator=g) for k, v in base.items()}
        model.load_state_dict(sd)
        d = root / f"m{i}"
        model.save_pretrained(d)
        tok.save_pretrained(d)
        paths.append(d)
        sds.append(sd)
    return paths, sds


@pytest.fixture(scope="module")
def family(tmp_path_factory) -> tuple[Path, list[Path], list[dict], Path]:
    root = tmp_path_factory.mktemp("soup")
    paths, sds = make_family(root, 3)
    ex = root / "heldout.jsonl"
    ex.write_text("\n".join(json.dumps(e) for e in EXAMPLES) + "\n")
    return root, paths, sds, ex


def test_soup_of_one_model_is_that_model(family, tmp_path: Path) -> None:
    _root, paths, sds, ex = family
    res = model_soup([paths[1]], ex, out_dir=tmp_path / "one", keep_state_dict=True)
    got = load_file(str(tmp_path / "one" / "model.safetensors"))
    for k, v in got.items():
        torch.testing.assert_close(v, sds[1][k], rtol=0, atol=1e-7)
        assert torch.equal(res.state_dict[k], sds[1][k])  # type: ignore[index]
    assert res.score == pytest.approx(evaluate(paths[1], ex, "loss")["loss"], abs=1e-9)
    assert res.kept == [str(paths[1])]


def test_uniform_soup_is_the_mean(family, tmp_path: Path) -> None:
    _root, paths, sds, ex = family
    code, out, err = run_cli("soup", "--models", *map(str, paths), "--eval", str(ex), "--out", str(tmp_path / "u"))
    assert code == 0, err
    assert "uniform soup of 3 models" in out and all(f"model {p}" in out for p in paths)
    got = load_file(str(tmp_path / "u" / "model.safetensors"))
    assert set(got) == set(sds[0])
    for k, v in got.items():
        torch.testing.assert_close(v, (sds[0][k] + sds[1][k] + sds[2][k]) / 3, rtol=1e-6, atol=1e-6)
    # the printed score is the score of the written soup
    printed = float(out.split("uniform soup of 3 models: loss ")[1].split()[0])
    assert printed == pytest.approx(evaluate(tmp_path / "u", ex, "loss")["loss"], rel=1e-5)


def test_greedy_soup_never_worse_than_best_model(family, tmp_path: Path) -> None:
    _root, paths, _sds, ex = family
    lines: list[str] = []
    res = model_soup(paths, ex, greedy=True, metric="loss", out_dir=tmp_path / "g", log=lines.append)
    best_single = min(res.individual.values())
    assert res.score <= best_single
    assert res.kept[0] == min(res.individual, key=res.individual.__getitem__)
    assert [s.step for s in res.trajectory] == [1, 2, 3]
    assert sum(s.kept for s in res.trajectory) == len(res.kept)
    assert sum("candidate" in line for line in lines) == 3
    written = evaluate(tmp_path / "g", ex, "loss")["loss"]
    assert written == pytest.approx(res.score, abs=1e-5)
    # exact_match goes the other way (higher is better) and never drops below the best single model
    res_em = model_soup(paths[1:], ex, greedy=True, metric="exact_match")
    assert res_em.score >= max(res_em.individual.values())


def test_greedy_cli_prints_trajectory(family, tmp_path: Path) -> None:
    _root, paths, _sds, ex = family
    code, out, err = run_cli("soup", "--models", str(paths[0]), str(paths[2]), "--eval", str(ex), "--greedy",
                             "--out", str(tmp_path / "g"))
    assert code == 0, err
    assert "step 1: candidate" in out and "step 2: candidate" in out and "greedy soup: kept" in out
    code, _out, err = run_cli("soup", "--models", str(paths[0]), str(paths[2]), "--eval", str(ex), "--greedy",
                              "--out", str(tmp_path / "g"))
    assert code != 0 and "already exists" in err


def test_bad_inputs(family, tmp_path: Path) -> None:
    root, paths, _sds, ex = family
    out = tmp_path / "o"
    code, _o, err = run_cli("soup", "--models", str(paths[0]), "--eval", str(ex), "--out", str(out))
    assert code == 2 and "at least two models" in err and not out.exists()
    # incompatible architecture: a wider model
    other, _ = make_family(tmp_path / "wide", 1, hidden=48)
    code, _o, err = run_cli("soup", "--models", str(paths[0]), str(other[0]), "--eval", str(ex), "--out", str(out))
    assert code == 2 and "shape" in err and not out.exists()
    with pytest.raises(InputError, match="different tensors|shape"):
        model_soup([paths[0], other[0]], ex)
    # empty and malformed example files name the file (and line)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    code, _o, err = run_cli("soup", "--models", str(paths[0]), str(paths[1]), "--eval", str(empty), "--out", str(out))
    assert code == 2 and "no examples" in err and not out.exists()
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(EXAMPLES[0]) + "\n{not json\n")
    with pytest.raises(DataError, match=r"bad\.jsonl:2"):
        model_soup(paths[:2], bad, out_dir=out)
    nofield = tmp_path / "nofield.jsonl"
    nofield.write_text(json.dumps({"input": "x"}) + "\n")
    code, _o, err = run_cli("soup", "--models", str(paths[0]), str(paths[1]), "--eval", str(nofield), "--out", str(out))
    assert code == 2 and "nofield.jsonl:1" in err and "output" in err
    code, _o, err = run_cli("soup", "--models", str(paths[0]), str(root / "missing"), "--eval", str(ex), "--out", str(out))
    assert code == 2 and "missing" in err
    assert not out.exists()
    out.mkdir()
    with pytest.raises(OutputError):
        model_soup(paths[:2], ex, out_dir=out)
    with pytest.raises(InputError, match="metric"):
        model_soup(paths[:2], ex, metric="accuracy")
