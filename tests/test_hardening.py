"""The bad-input battery of issue 8: nothing lost, nothing misleading, one interface.

Every case runs a real command (in-process through ``modelmix.cli.main`` or as a subprocess) and checks what
a user sees: the exit code, a one-paragraph message that names the problem, no traceback, nothing written,
inputs byte-identical.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import click
import pytest
import torch

from conftest import make_model, run_cli, snapshot, write_recipe
from modelmix.cli import _LAZY, app
from modelmix.cli_common import DeviceType
from modelmix.errors import ConfigError, DataError, DeviceError, OutputError

EXAMPLES = [{"input": f"{a}+{b}=", "output": str(a + b)} for a in range(3) for b in range(3)]


def _refused(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err and "error: " in err, err
    msg = err[err.index("error: "):].strip()
    assert "\n\n" not in msg, msg  # one paragraph
    flat = " ".join(msg.split())
    for n in needles:
        assert n in flat, (n, flat)


def _tmp_dirs(d: Path) -> list[str]:
    return [p.name for p in d.iterdir() if ".modelmix-" in p.name or ".old-" in p.name]


def _linear(root: Path, *models: str, extra: str = "") -> Path:
    body = "\n".join(f"  - model: {root / m}\n    parameters: {{weight: 1.0}}" for m in models)
    return write_recipe(root / "r.yml", f"merge_method: linear\nmodels:\n{body}\ndtype: float32\n{extra}")


@pytest.fixture
def decoders(tmp_path: Path):
    """Two tiny loadable Llamas (char tokenizer) and an examples file, all under tmp_path."""
    from modelmix.eval._tiny import make_tiny_llama

    paths = []
    for i in range(2):
        m, tok = make_tiny_llama(hidden=16, layers=1, heads=2, intermediate=32, seed=i)
        d = tmp_path / f"d{i}"
        m.save_pretrained(d)
        tok.save_pretrained(d)
        paths.append(d)
    ex = tmp_path / "ex.jsonl"
    ex.write_text("".join(json.dumps(e) + "\n" for e in EXAMPLES))
    return tmp_path, paths, ex


# ------------------------------------------------------------------------ 1. an input can never be destroyed
@pytest.mark.parametrize("case", ["is-model", "inside-model", "contains-models", "symlink", "dotdot",
                                  "tokenizer-source", "recipe", "lora"])
def test_merge_refuses_output_on_in_or_around_an_input(trio, case: str):
    root, _ = trio
    extra, m2 = "", "ft2"
    if case == "tokenizer-source":
        make_model(root / "tok", seed=9)
        extra = f"tokenizer_source: {root / 'tok'}\n"
    if case == "lora":
        from test_io import _write_lora

        base = make_model(root / "plain", seed=7)
        q = "model.layers.0.self_attn.q_proj.weight"
        _write_lora(root / "adapter", {q: tuple(base[q].shape)}, r=2, alpha=4)
        m2 = f"plain+{root / 'adapter'}"
    recipe = _linear(root, "ft1", m2, extra=extra)
    if case == "recipe":
        (root / "recipes").mkdir()
        recipe = recipe.rename(root / "recipes" / "r.yml")
    (root / "link").symlink_to(root / "ft1")
    out, needle = {
        "is-model": (root / "ft1", "is the input model"),
        "inside-model": (root / "ft1" / "merged", "lies inside the input model"),
        "contains-models": (root, "contains the"),
        "symlink": (root / "link", "is the input model"),
        "dotdot": (root / "ft2" / ".." / "ft1", "is the input model"),
        "tokenizer-source": (root / "tok", "is the tokenizer source"),
        "recipe": (root / "recipes", "contains the recipe"),
        "lora": (root / "adapter", "is the LoRA adapter"),
    }[case]
    before = snapshot(root)
    code, _, err = run_cli("merge", str(recipe), str(out), "--overwrite")
    _refused(code, err, needle, "never writes over", str(Path(os.path.realpath(out))))
    assert snapshot(root) == before and _tmp_dirs(root) == []


def test_weighting_commands_refuse_outputs_on_inputs(decoders):
    root, (d0, d1), ex = decoders
    before = snapshot(root)
    cases = [
        ("cocktail", str(d0), str(d1), "--weights", "1", "1", "--out", str(d0), "--overwrite"),
        ("cocktail", str(d0), str(d1), "--examples", str(ex), "--out", str(root), "--overwrite"),
        ("soup", str(d0), str(d1), "--examples", str(ex), "--out", str(d1), "--overwrite"),
        ("soup", str(d0), str(d1), "--examples", str(ex), "--out", str(d0 / "soup")),
        ("lmc", str(d0), str(d1), "--examples", str(ex), "--merge-best", "--out", str(d1), "--overwrite"),
        ("lmc", str(d0), str(d1), "--examples", str(ex), "--png", str(d0 / "curve.png")),
        ("analyze", "--base", str(d0), str(d1), str(d1), "--html", str(d1 / "report.html")),
        ("analyze", "--base", str(d0), str(d1), str(d1), "--png-dir", str(d0)),
    ]
    for args in cases:
        code, _, err = run_cli(*args)
        _refused(code, err, "never writes over")
        assert snapshot(root) == before, args


def test_zoo_outputs_stay_out_of_the_zoo(zoo_dir: Path):
    before = {p: p.stat().st_mtime_ns for p in zoo_dir.rglob("*")}
    code, _, err = run_cli("zoo", "report", "--zoo", str(zoo_dir), "--out", str(zoo_dir / "report.md"))
    _refused(code, err, "lies inside the zoo")
    code, _, err = run_cli("zoo", "report", "--zoo", str(zoo_dir), "--write-dir", str(zoo_dir / "experts"))
    _refused(code, err, "lies inside the zoo")
    assert {p: p.stat().st_mtime_ns for p in zoo_dir.rglob("*")} == before


def test_zoo_build_force_replaces_only_a_zoo(tmp_path: Path, cache_env: Path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("years of work")
    code, _, err = run_cli("zoo", "build", "--out", str(tmp_path / "mine"), "--preset", "test", "--force")
    _refused(code, err, "is not a model zoo")
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "years of work"
    code, _, err = run_cli("zoo", "build", "--out", str(cache_env), "--preset", "test")
    _refused(code, err, "contains the zoo cache")


# ------------------------------------------------------------------------ 2. disk full, free-space units
def test_disk_full_while_writing_aux_files_is_an_output_error(trio, monkeypatch):
    root, _ = trio
    recipe = _linear(root, "ft1", "ft2")
    real = Path.write_bytes

    def full(self: Path, data):  # noqa: ANN001
        if self.name == "tokenizer.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", full)
    before = snapshot(root)
    code, _, err = run_cli("merge", str(recipe), str(root / "out"))
    _refused(code, err, "No space left", str(root / "out" / "tokenizer.json"))
    assert str(root / "ft1" / "tokenizer.json") not in err  # names the output, not the input it copied
    assert not (root / "out").exists() and _tmp_dirs(root) == [] and snapshot(root) == before


def test_free_space_check_uses_readable_units(trio, monkeypatch):
    import shutil
    from collections import namedtuple

    root, _ = trio
    recipe = _linear(root, "ft1", "ft2")
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9, 1500))
    code, _, err = run_cli("merge", str(recipe), str(root / "out"))
    _refused(code, err, "Not enough free space", "has 1.5 KB free")
    assert "0.00 GB" not in err and "KB but" in err and not (root / "out").exists()


# ------------------------------------------------------------------------ 5. one scoring convention
def test_zoo_models_carry_their_prompt_convention(zoo_dir: Path, tmp_path: Path):
    from modelmix.eval.models import SEPARATOR_KEY, EvalModel, prompt_separator
    from modelmix.zoo import load_zoo

    z = load_zoo(zoo_dir)
    for name, spec in z.models.items():
        if spec["type"] == "decoder":
            assert prompt_separator(z.model_path(name)) == ""
            assert json.loads((z.model_path(name) / "config.json").read_text())[SEPARATOR_KEY] == ""
    # a zoo built before config.json carried the key: the manifest still tells
    cfg_path = z.model_path("base") / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.pop(SEPARATOR_KEY)
    cfg_path.write_text(json.dumps(cfg))
    try:
        assert prompt_separator(z.model_path("base")) == ""
    finally:
        cfg[SEPARATOR_KEY] = ""
        cfg_path.write_text(json.dumps(cfg))
    make_model(tmp_path / "plain")
    assert prompt_separator(tmp_path / "plain") == " "  # LM-Cocktail's convention for ordinary models
    assert EvalModel.from_pretrained(z.model_path("experts/facts")).separator == ""
    # a merge of zoo models keeps the convention (config.json is copied from the base)
    recipe = write_recipe(tmp_path / "r.yml", f"merge_method: linear\nmodels:\n"
                          f"  - model: {z.model_path('base')}\n    parameters: {{weight: 1.0}}\n"
                          f"  - model: {z.model_path('experts/facts')}\n    parameters: {{weight: 1.0}}\n")
    code, _, err = run_cli("merge", str(recipe), str(tmp_path / "m"), "-q")
    assert code == 0, err
    assert prompt_separator(tmp_path / "m") == ""


def test_scoring_commands_measure_zoo_experts_in_their_own_format(zoo_dir: Path, tmp_path: Path):
    """The issue's symptoms: soup kept only the base and analyze called the experts worse than the base,
    because both scored the zoo's models with LM-Cocktail's space, which they never saw in training."""
    from modelmix.zoo import load_zoo

    z = load_zoo(zoo_dir)
    base, expert = z.model_path("base"), z.model_path("experts/facts")
    ex = z.split_path("facts", "validation")
    code, out, err = run_cli("soup", str(base), str(expert), "--examples", str(ex), "--greedy",
                             "--out", str(tmp_path / "soup"))
    assert code == 0, err
    losses = {ln.split()[1].rstrip(":"): float(ln.split()[-1]) for ln in out.splitlines() if ln.startswith("model ")}
    assert losses[str(expert)] < losses[str(base)]  # the expert is better on its own task
    assert "step 1: candidate " + str(expert) in out  # so the greedy soup starts from the expert
    code, out2, err = run_cli("soup", str(base), str(expert), "--examples", str(ex), "--greedy", "--separator", " ",
                              "--out", str(tmp_path / "soup2"))
    assert code == 0, err
    assert out2 != out  # --separator overrides the model's convention
    code, out, err = run_cli("analyze", "--base", str(base), str(expert), str(z.model_path("experts/addition")),
                             "--examples", str(ex), "--json")
    assert code == 0, err
    tasks = json.loads(out)["tasks"]
    assert tasks["scores"]["facts"]["validation"]["loss"] < tasks["base_scores"]["validation"]["loss"]


def test_lmc_merge_best_honours_metric(decoders, tmp_path: Path):
    from modelmix.weighting.lmc import LMCResult

    r = LMCResult([0.0, 0.5, 1.0], [1.0, 0.5, 2.0], [0.2, 0.0, 0.9], 0.0, 0.5, "exact_match")
    assert r.best_t == 0.5 and r.best_t_metric == 1.0 and r.selected_t == 1.0
    r = LMCResult([0.0, 0.5, 1.0], [1.0, 0.5, 2.0], [0.9, 0.9, 0.1], 0.0, 0.5, "exact_match")
    assert r.best_t_metric == 0.5  # ties in the metric go to the lower loss
    assert LMCResult([0.0, 1.0], [1.0, 2.0], None, 0.0, 0.0).selected_t == 0.0
    root, (d0, d1), ex = decoders
    code, out, err = run_cli("lmc", str(d0), str(d1), "--examples", str(ex), "--points", "3",
                             "--metric", "exact_match", "--merge-best", "--out", str(tmp_path / "best"), "--json")
    assert code == 0, err
    d = json.loads(out)
    assert d["merged_t"] == d["best_t_metric"] == LMCResult(d["ts"], d["losses"], d["metric_values"], 0, 0).best_t_metric


# ------------------------------------------------------------------------ 6. check runs every header-level check
@pytest.mark.parametrize("recipe_tail, needle", [
    ("merge_method: linear\nmodels:\n  - model: {r}/ft1\n    parameters: {{weight: -1.0}}\n"
     "  - model: {r}/ft2\n    parameters: {{weight: 1.0}}\n", "sum to zero"),
    ("merge_method: multislerp\nmodels:\n  - model: {r}/ft1\n    parameters: {{weight: -1.0}}\n"
     "  - model: {r}/ft2\n    parameters: {{weight: 1.0}}\n", "sum to zero"),
    ("merge_method: della\nbase_model: {r}/base\nmodels:\n  - model: {r}/ft1\n"
     "    parameters: {{weight: 1.0, density: 0.9, epsilon: 0.2}}\n", "density + epsilon < 1"),
])
def test_check_rejects_what_merge_rejects(trio, recipe_tail: str, needle: str):
    root, _ = trio
    recipe = write_recipe(root / "r.yml", recipe_tail.format(r=root))
    code, _, err = run_cli("check", str(recipe))
    _refused(code, err, needle)
    code, _, err2 = run_cli("merge", str(recipe), str(root / "out"))
    _refused(code, err2, needle)
    assert not (root / "out").exists()


# ------------------------------------------------------------------------ 7. one parameter validator
def _bounded_params():
    from modelmix.methods.registry import all_methods

    for m in all_methods().values():
        for p in m.params:
            if p.type in (float, int) and (p.low is not None or p.high is not None):
                yield m, p


@pytest.mark.parametrize("method, param", [(m.name, p.name) for m, p in _bounded_params()])
def test_bounds_declared_once_hold_for_recipes_and_the_api(tmp_path: Path, method: str, param: str):
    """Every bound on the real registry is enforced identically by a recipe and by merge_tensors."""
    from modelmix import merge_tensors
    from modelmix.config import load_config
    from modelmix.methods import get_method

    m = get_method(method)
    p = m.param(param)
    required = {q.name: (0.5 if q.name != "weight" else 1.0) for q in m.params if q.required and q.name != param}
    bad = [v for v in ((p.low - 1) if p.low is not None else None, (p.high + 1) if p.high is not None else None)
           if v is not None]
    for v in bad:
        params = {**required, param: v}
        recipe = {"merge_method": method, "models": [{"model": "a", "parameters":
                  {k: x for k, x in params.items() if m.param(k).scope == "model"}},
                  {"model": "b", "parameters": {k: x for k, x in params.items() if m.param(k).scope == "model"}}],
                  "parameters": {k: x for k, x in params.items() if m.param(k).scope == "global"}}
        if m.needs_base:
            recipe["base_model"] = "base"
            if m.max_models == 1:
                recipe["models"] = recipe["models"][:1]
        with pytest.raises(ConfigError, match="out of range"):
            load_config(recipe)
        ts = [torch.randn(4, 4)] * (1 if m.max_models == 1 else 2)
        with pytest.raises(ConfigError, match="out of range"):
            merge_tensors(method, ts, base=torch.randn(4, 4) if m.needs_base else None, **params)


def test_slerp_t_bounded_on_the_real_registry():
    from modelmix import merge_tensors

    a, b = torch.randn(8), torch.randn(8)
    with pytest.raises(ConfigError, match="between 0 and 1"):
        merge_tensors("slerp", [a], base=b, t=1.2)
    with pytest.raises(ConfigError, match="between 0 and 1"):
        merge_tensors("ties", [a, a], base=b, weight=1.0, density=1.5)
    merge_tensors("slerp", [a], base=b, t=1.0)


# ------------------------------------------------------------------------ 8. one device check
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_one_clear_error(trio, decoders, zoo_dir: Path):
    root, _ = trio
    _r, (d0, d1), ex = decoders
    recipe = _linear(root, "ft1", "ft2")
    cases = [
        ("merge", str(recipe), str(root / "o"), "--device", "cuda"),
        ("soup", str(d0), str(d1), "--examples", str(ex), "--out", str(root / "o"), "--device", "cuda"),
        ("lmc", str(d0), str(d1), "--examples", str(ex), "--device", "cuda"),
        ("cocktail", str(d0), str(d1), "--examples", str(ex), "--weights-only", "--device", "cuda"),
        ("analyze", "--base", str(d0), str(d1), str(d1), "--device", "cuda"),
        ("eval", str(d0), "--examples", str(ex), "--device", "cuda"),
        ("zoo", "report", "--zoo", str(zoo_dir), "--device", "cuda"),
    ]
    for args in cases:
        code, _, err = run_cli(*args)
        _refused(code, err, "no CUDA GPU is available")
        assert "AssertionError" not in err and not (root / "o").exists(), args
    code, _, err = run_cli("soup", str(d0), str(d1), "--examples", str(ex), "--out", str(root / "o"), "--device", "tpu")
    assert code == 2 and "'tpu' is not one of 'cpu', 'cuda'" in err and "Traceback" not in err
    code, _, err = run_cli("soup", str(d0), str(d1), "--examples", str(ex), "--out", str(root / "o"),
                           "--device", "cuda:1")  # a valid spelling: refused for want of a GPU, not as a typo
    _refused(code, err, "no CUDA GPU is available")


def test_api_device_check():
    from modelmix.devices import check_device

    assert check_device("cpu") == "cpu" and check_device(torch.device("cpu")) == "cpu"
    with pytest.raises(DeviceError, match="Unknown device 'tpu'"):
        check_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="no CUDA GPU"):
            check_device("cuda:0")


# ------------------------------------------------------------------------ 9. every API name, every call
def test_public_api_names_work_on_every_call(trio):
    root, _ = trio
    recipe = _linear(root, "ft1", "ft2")
    code = f"""
import modelmix, torch
for name in modelmix.__all__:
    getattr(modelmix, name)
for i in range(2):
    p = modelmix.plan({str(recipe)!r}); p.close()
    r = modelmix.merge({str(recipe)!r}, {str(root)!r} + f"/out{{i}}")
    assert r.tensors > 0
    t = modelmix.merge_tensors("linear", [torch.ones(2), torch.zeros(2)], weight=[1.0, 1.0])
    assert torch.equal(t, torch.full((2,), 0.5))
import modelmix.planner, modelmix.api
assert callable(modelmix.plan) and callable(modelmix.merge) and callable(modelmix.merge_tensors)
"""
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)


def test_merge_accepts_yaml_text_and_says_what_it_takes(trio):
    from modelmix import merge

    root, _ = trio
    text = _linear(root, "ft1", "ft2").read_text()
    assert merge(text, root / "from-text").tensors > 0
    with pytest.raises(ConfigError, match="YAML file path, YAML text"):
        merge(["not", "a", "recipe"], root / "x")


# ------------------------------------------------------------------------ 10/11. analyze and cocktail on the zoo
def test_analyze_accepts_the_zoos_embedders(zoo_dir: Path):
    from modelmix.zoo import load_zoo

    z = load_zoo(zoo_dir)
    embedders = [m for m, s in z.models.items() if s["type"] == "encoder" and s.get("parent")]
    code, out, err = run_cli("analyze", "--base", str(z.model_path("embedders/base")),
                             *[str(z.model_path(m)) for m in embedders[:2]], "--json")
    assert code == 0, err
    assert len(json.loads(out)["pairs"]) == 1


def test_cocktail_type_mismatch_says_what_the_model_is(zoo_dir: Path, decoders):
    from modelmix.zoo import load_zoo

    z = load_zoo(zoo_dir)
    _r, (d0, d1), ex = decoders
    code, _, err = run_cli("cocktail", str(d0), str(d1), "--examples", str(ex), "--type", "encoder", "--weights-only")
    _refused(code, err, "--type encoder was given", "is a decoder", "LlamaForCausalLM")
    embs = [str(z.model_path(m)) for m, s in z.models.items() if s["type"] == "encoder"][:2]
    enc_ex = z.split_path(z.encoder_tasks()[0], "validation")
    code, _, err = run_cli("cocktail", *embs, "--examples", str(enc_ex), "--type", "decoder", "--weights-only")
    _refused(code, err, "--type decoder was given", "is an encoder")


# ------------------------------------------------------------------------ 12. one interface
def _all_commands():
    ctx = click.Context(app, obj={"debug": False})
    for name in app.list_commands(ctx):
        cmd = app.get_command(ctx, name)
        if isinstance(cmd, click.Group):
            for sub in cmd.commands.values():
                yield f"{name} {sub.name}", sub
        else:
            yield name, cmd


def test_every_option_has_help_and_every_command_takes_debug(tmp_path):
    seen = []
    for name, cmd in _all_commands():
        seen.append(name)
        for p in cmd.params:
            if isinstance(p, click.Option):
                assert p.help, f"modelmix {name} {p.opts[0]} has no help text"
            if isinstance(p, click.Option) and "--device" in p.opts:
                assert isinstance(p.type, DeviceType), name
        # declared once, on the group; main() accepts it anywhere on the line
        assert not any("--debug" in p.opts for p in cmd.params if isinstance(p, click.Option)), name
        code, out, err = run_cli(*name.split(), "--debug", "--help")
        assert code == 0 and "Usage:" in out, (name, err)
    assert {"merge", "check", "eval", "soup", "lmc", "cocktail", "analyze", "zoo build", "zoo report"} <= set(seen)
    assert "--debug" in run_cli("--help")[1]
    from modelmix.errors import ModelmixError

    code, _, err = run_cli("check", str(tmp_path / "missing.yml"))
    assert code == 2 and "Traceback" not in err
    with pytest.raises(ModelmixError):  # after the subcommand too: the error propagates (a traceback)
        run_cli("check", str(tmp_path / "missing.yml"), "--debug")


def test_one_flag_vocabulary():
    cmds = dict(_all_commands())
    for name in ("cocktail", "soup", "lmc", "analyze", "eval"):
        opts = {o for p in cmds[name].params for o in getattr(p, "opts", [])}
        assert "--examples" in opts, name
    for name in ("cocktail", "soup", "lmc", "analyze"):  # models are positional everywhere
        assert any(isinstance(p, click.Argument) and p.name == "models" for p in cmds[name].params), name
    code, out, _ = run_cli("--help")
    assert code == 0 and "..." not in out.split("Commands:")[1]
    for name in [*_LAZY, "merge", "check"]:
        assert name in out
    code, out, _ = run_cli("zoo", "build", "--help")
    assert code == 0 and "test" in out and "1 min" in out and "6 min" in out and "smol" in out and "19 min" in out


def test_soup_eval_alias_and_models_option_still_work(decoders, tmp_path: Path):
    _r, (d0, d1), ex = decoders
    code, _, err = run_cli("soup", "--models", str(d0), str(d1), "--eval", str(ex), "--out", str(tmp_path / "s"))
    assert code == 0, err
    code, _, err = run_cli("soup", str(d0), str(d1), "--out", str(tmp_path / "s2"))
    assert code == 2 and "--examples" in err


def test_merge_creates_missing_parents_and_removes_them_on_failure(trio, monkeypatch):
    root, _ = trio
    recipe = _linear(root, "ft1", "ft2")
    code, _, err = run_cli("merge", str(recipe), str(root / "a" / "b" / "out"), "-q")
    assert code == 0, err
    assert (root / "a" / "b" / "out" / "model.safetensors").is_file()
    import modelmix.execute as ex

    def boom(self, *a, **k):  # noqa: ANN001, ANN002, ANN003
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ex.Executor, "run", boom)
    with pytest.raises(OSError):
        from modelmix.cli import main

        main(["merge", str(recipe), str(root / "x" / "y" / "out"), "-q"])
    assert not (root / "x").exists()


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_outputs_get_the_users_umask(trio, mask: int):
    root, _ = trio
    recipe = _linear(root, "ft1", "ft2")
    old = os.umask(mask)
    try:
        code, _, err = run_cli("merge", str(recipe), str(root / "out"), "-q")
    finally:
        os.umask(old)
    assert code == 0, err
    assert stat.S_IMODE((root / "out").stat().st_mode) == 0o777 & ~mask
    for f in (root / "out").iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~mask, f
    card = (root / "out" / "README.md").read_text()
    assert "example.invalid" not in card and "](" not in card


# ------------------------------------------------------------------------ 13. quiet, forgiving readers
def test_commands_are_quiet_by_default(decoders):
    root, (d0, d1), ex = decoders
    env = {**os.environ, "PYTHONWARNINGS": "default"}
    for args in (["eval", str(d0), "--examples", str(ex)],
                 ["soup", str(d0), str(d1), "--examples", str(ex), "--out", str(root / "s")]):
        p = subprocess.run([sys.executable, "-m", "modelmix.cli", *args], capture_output=True, text=True, env=env)
        assert p.returncode == 0, p.stderr
        for noise in ("Loading weights", "Writing model shards", "FutureWarning", "Warning:"):
            assert noise not in p.stderr, (args, p.stderr)


def test_jsonl_with_bom_and_json_arrays(tmp_path: Path):
    from modelmix.eval.data import load_examples

    f = tmp_path / "bom.jsonl"
    f.write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(e) + "\n" for e in EXAMPLES[:2]).encode())
    assert load_examples(f) == EXAMPLES[:2]
    arr = tmp_path / "array.jsonl"
    arr.write_text(json.dumps(EXAMPLES[:2], indent=2))
    with pytest.raises(DataError, match="one JSON array.*JSON Lines: one object per line"):
        load_examples(arr)
    code, _, err = run_cli("eval", str(tmp_path), "--examples", str(arr))
    _refused(code, err, "expects JSON Lines: one object per line")


def test_output_check_is_shared(tmp_path: Path):
    """Every writing command goes through modelmix.io.outputs; the function itself, edge cases."""
    from modelmix.io.outputs import check_output_dir, check_output_file, guard_inputs, human_bytes

    (tmp_path / "m").mkdir()
    (tmp_path / "ex.jsonl").write_text("{}\n")
    with pytest.raises(OutputError, match="is the examples file"):
        check_output_file(tmp_path / "ex.jsonl", overwrite=True, inputs=[("examples file", tmp_path / "ex.jsonl")])
    with pytest.raises(OutputError, match="already exists. Pass --overwrite"):
        check_output_file(tmp_path / "ex.jsonl", overwrite=False)
    with pytest.raises(OutputError, match="ending in .html"):
        check_output_file(tmp_path / "report.txt", overwrite=True, suffix=(".html", ".htm"))
    with pytest.raises(OutputError, match="contains the input model"):
        check_output_dir(tmp_path, overwrite=True, inputs=[("input model", tmp_path / "m")])
    guard_inputs(tmp_path / "m2", [("input model", tmp_path / "m")])  # a sibling with a common prefix is fine
    assert check_output_dir(tmp_path / "new" / "deeper", overwrite=False) == (tmp_path / "new" / "deeper")
    assert [human_bytes(n) for n in (0, 999, 1500, 2.5e6, 7.25e9)] == ["0 B", "999 B", "1.5 KB", "2.5 MB", "7.25 GB"]


# ------------------------------------------------------------------------ found by trying it as a new user
def test_overwrite_replaces_only_an_earlier_output(trio, monkeypatch):
    root, _ = trio
    recipe = _linear(root, "ft1", "ft2")
    work = root / "work"
    (work / "sub").mkdir(parents=True)
    (work / "sub" / "data.txt").write_text("mine")
    monkeypatch.chdir(work)
    code, _, err = run_cli("merge", str(recipe), ".", "--overwrite")
    _refused(code, err, "current directory")
    code, _, err = run_cli("merge", str(recipe), str(work), "--overwrite")
    _refused(code, err, "current directory")
    (root / "notes").mkdir()
    (root / "notes" / "thesis.tex").write_text("years of work")
    (root / "notes" / "config.json").write_text("{}")  # a project's config.json does not make it a model
    code, _, err = run_cli("merge", str(recipe), str(root / "notes"), "--overwrite")
    _refused(code, err, "does not look like a model directory", "thesis.tex")
    assert (work / "sub" / "data.txt").read_text() == "mine"
    assert (root / "notes" / "thesis.tex").read_text() == "years of work"
    # an earlier output, an empty directory and a dangling link are replaced
    for target in ("prev", "empty", "dangling"):
        if target == "prev":
            assert run_cli("merge", str(recipe), str(root / "prev"), "-q")[0] == 0
        elif target == "empty":
            (root / "empty").mkdir()
        else:
            (root / "dangling").symlink_to(root / "nowhere")
        code, _, err = run_cli("merge", str(recipe), str(root / target), "--overwrite", "-q")
        assert code == 0, (target, err)
        assert (root / target / "model.safetensors").is_file()


def test_an_output_on_an_input_is_refused_before_the_exists_check(trio):
    root, _ = trio
    code, _, err = run_cli("merge", str(_linear(root, "ft1", "ft2")), str(root / "ft1"))
    _refused(code, err, "is the input model")  # not "already exists. Pass --overwrite"


def test_report_files_are_replaced_only_with_overwrite(decoders, zoo_dir: Path, tmp_path: Path):
    root, (d0, d1), ex = decoders
    keep = tmp_path / "keep.html"
    keep.write_text("<p>my notes</p>")
    code, _, err = run_cli("analyze", "--base", str(d0), str(d1), str(d1), "--html", str(keep))
    _refused(code, err, "already exists. Pass --overwrite")
    code, _, err = run_cli("analyze", "--base", str(d0), str(d1), str(d1), "--html", str(ex.with_suffix(".txt")))
    _refused(code, err, "ending in .html")
    code, _, err = run_cli("lmc", str(d0), str(d1), "--examples", str(ex), "--png", str(keep.with_suffix(".png")))
    assert code == 0, err
    code, _, err = run_cli("lmc", str(d0), str(d1), "--examples", str(ex), "--png", str(keep.with_suffix(".png")))
    _refused(code, err, "already exists. Pass --overwrite")
    (tmp_path / "report.md").write_text("mine")
    code, _, err = run_cli("zoo", "report", "--zoo", str(zoo_dir), "--out", str(tmp_path / "report.md"))
    _refused(code, err, "already exists. Pass --overwrite")
    (tmp_path / "wd" / "soup").mkdir(parents=True)
    code, _, err = run_cli("zoo", "report", "--zoo", str(zoo_dir), "--methods", "soup", "--write-dir", str(tmp_path / "wd"))
    _refused(code, err, "already holds soup", "--overwrite")
    assert keep.read_text() == "<p>my notes</p>" and (tmp_path / "report.md").read_text() == "mine"


def _slow_recipe(root: Path) -> Path:
    base = make_model(root / "bigbase", hidden=384, layers=8, vocab=4096, seed=0)
    make_model(root / "bigft", hidden=384, layers=8, vocab=4096, seed=1, like=base)
    return write_recipe(root / "slow.yml", f"merge_method: ties\nbase_model: {root / 'bigbase'}\nmodels:\n"
                        f"  - model: {root / 'bigft'}\n    parameters: {{weight: 1.0, density: 0.5}}\n"
                        "dtype: float32\n")


@pytest.mark.parametrize("signame, code, sigint_ignored", [("SIGTERM", 143, False), ("SIGHUP", 129, False),
                                                            ("SIGTERM", 143, True)])
def test_sigterm_during_a_merge_leaves_nothing(tmp_path: Path, signame: str, code: int, sigint_ignored: bool):
    """kill / a scheduler's preemption / a closed terminal; also for a background job (SIGINT ignored)."""
    import signal
    import time

    recipe = _slow_recipe(tmp_path)
    before = snapshot(tmp_path / "bigft")
    env = {**os.environ, "MODELMIX_DIRECT_IO": "0"}

    def start() -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN if sigint_ignored else signal.SIG_DFL)
        for s in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, signal.SIG_DFL)

    p = subprocess.Popen([sys.executable, "-m", "modelmix.cli", "merge", str(recipe), str(tmp_path / "out"),
                          "--threads", "1"], stderr=subprocess.PIPE, text=True, env=env, preexec_fn=start)
    deadline = time.time() + 60
    while not _tmp_dirs(tmp_path) and p.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    p.send_signal(getattr(signal, signame))
    _, err = p.communicate(timeout=120)
    if p.returncode == 0:
        pytest.skip("the merge finished before the signal arrived")
    assert p.returncode == code, err
    assert "Aborted." in err and "Traceback" not in err
    assert not (tmp_path / "out").exists() and _tmp_dirs(tmp_path) == []
    assert snapshot(tmp_path / "bigft") == before


def test_temp_dirs_of_dead_merges_are_removed(trio):
    """A temp dir nobody holds locked is a dead merge's (SIGKILL, power cut): the next merge to the same
    target removes it; a locked one (a running merge, whatever its PID namespace) and another host's stay."""
    import fcntl

    from modelmix.io import writer

    root, _ = trio
    dead = root / f"{writer._tmp_prefix('out').replace(str(os.getpid()), '12345')}abcd1234"
    live = root / f"{writer._tmp_prefix('out').replace(str(os.getpid()), '12346')}live0000"
    other = root / ".out.modelmix-otherhost-1-abcd1234"  # another host on a shared file system
    for d in (dead, live, other):
        d.mkdir()
        (d / "model-00001-of-00002.safetensors").write_bytes(b"partial")
    fd = os.open(live, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # as the running merge that owns it does
    try:
        code, _, err = run_cli("merge", str(_linear(root, "ft1", "ft2")), str(root / "out"), "-q")
    finally:
        os.close(fd)
    assert code == 0, err
    assert not dead.exists() and live.exists() and other.exists()


def test_overwrite_swaps_outputs_atomically(trio, monkeypatch):
    """With --overwrite the new output takes the old one's place in one rename (no moment without a model
    at the target); where renameat2 is missing the old output is moved aside and restored on failure."""
    from modelmix.io import outputs, writer

    root, _ = trio
    recipe = _linear(root, "ft1", "ft2")
    assert run_cli("merge", str(recipe), str(root / "out"), "-q")[0] == 0
    calls = []
    real = writer.rename2
    monkeypatch.setattr(writer, "rename2", lambda a, b, f: calls.append(f) or real(a, b, f))
    code, _, err = run_cli("merge", str(recipe), str(root / "out"), "--overwrite", "-q")
    assert code == 0, err
    if outputs._renameat2() is not None:
        assert calls == [outputs.RENAME_EXCHANGE]
        assert not [p for p in root.iterdir() if ".old-" in p.name]  # no moving aside
    monkeypatch.setattr(writer, "rename2", lambda a, b, f: False)  # no renameat2: the fallback
    code, _, err = run_cli("merge", str(recipe), str(root / "out"), "--overwrite", "-q")
    assert code == 0, err and (root / "out" / "model.safetensors").is_file()
    assert _tmp_dirs(root) == []


def test_model_card_records_the_seed_the_merge_used(trio):
    root, _ = trio
    recipe = write_recipe(root / "d.yml", f"merge_method: dare_ties\nbase_model: {root / 'base'}\nmodels:\n"
                          f"  - model: {root / 'ft1'}\n    parameters: {{weight: 1.0, density: 0.5}}\n"
                          "random_seed: 42\ndtype: float32\n")
    code, _, err = run_cli("merge", str(recipe), str(root / "o"), "--seed", "7", "-q")
    assert code == 0, err
    card = (root / "o" / "README.md").read_text()
    assert "random_seed: 7" in card and "random_seed: 42" not in card


def test_small_cli_mistakes_are_caught(trio, decoders, zoo_dir: Path):
    root, _ = trio
    _r, (d0, d1), ex = decoders
    recipe = _linear(root, "ft1", "ft2")
    for bad in ("0", "-3MB"):
        code, _, err = run_cli("merge", str(recipe), str(root / "o"), "--out-shard-size", bad)
        assert code == 2 and "must be positive" in err and not (root / "o").exists(), err
    code, _, err = run_cli("eval", str(d0), "--examples", str(ex), "--limit", "5")
    assert code == 2 and "--limit applies to --lm-eval" in err
    code, _, err = run_cli("cocktail", str(d0), str(d1), "--weights", "1", "1", "--granularity", "layer",
                           "--out", str(root / "c"))
    _refused(code, err, "nothing to search")
    from modelmix.zoo import load_zoo

    z = load_zoo(zoo_dir)
    emb = z.model_path("embedders/base")
    code, _, err = run_cli("eval", str(emb), "--examples", str(ex), "--metric", "loss")
    _refused(code, err, "--metric loss needs a decoder", "is an encoder")
    code, _, err = run_cli("eval", str(emb), "--examples", str(ex))
    _refused(code, err, "{input, output} decoder examples", "is an encoder")
    other = next(m for m, spec in z.models.items() if spec["type"] == "encoder" and m != "embedders/base")
    code, _, err = run_cli("soup", str(emb), str(z.model_path(other)), "--examples", str(ex), "--out", str(root / "s"))
    _refused(code, err, "needs a decoder")
    lora_recipe = write_recipe(root / "l.yml", f"merge_method: linear\nmodels:\n  - model: {root / 'ft1'}+./nolora\n"
                               "    parameters: {weight: 1.0}\n")
    code, _, err = run_cli("check", str(lora_recipe))
    _refused(code, err, "LoRA adapter of", "nolora")
    assert "huggingface-cli" not in err


def test_dry_run_into_a_closed_pipe_exits_quietly(trio):
    root, _ = trio
    recipe = _linear(root, "ft1", "ft2")
    p = subprocess.Popen([sys.executable, "-m", "modelmix.cli", "merge", str(recipe), str(root / "o"), "--dry-run"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.readline()
    p.stdout.close()  # as `| head -1` does
    err = p.stderr.read().decode()
    assert p.wait(timeout=60) == 0 and "Traceback" not in err and "BrokenPipe" not in err, err


def test_zoo_copy_follows_umask_and_messages_fit(zoo_dir: Path, cache_env: Path, tmp_path: Path):
    old = os.umask(0o022)
    try:
        code, out, err = run_cli("zoo", "build", "--out", str(tmp_path / "z"), "--preset", "test", "--no-progress")
    finally:
        os.umask(old)
    assert code == 0, err
    assert stat.S_IMODE((tmp_path / "z").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "z" / "base" / "model.safetensors").stat().st_mode) == 0o644
    assert "decoders" in out and "embedders" in out
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "f").write_text("x")
    code, _, err = run_cli("zoo", "build", "--out", str(tmp_path / "x"), "--preset", "test")
    _refused(code, err, "choose another --out")
    assert "--force" not in err  # --force would refuse to replace a non-zoo directory anyway
