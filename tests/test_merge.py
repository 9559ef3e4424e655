"""End-to-end merges through the CLI and API: outputs vs reference computations, round trips, bad inputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import make_model, run_cli, snapshot, write_recipe
from modelmix.cli import main


def load_dir(d: Path) -> dict[str, torch.Tensor]:
    sd: dict[str, torch.Tensor] = {}
    for f in sorted(d.glob("*.safetensors")):
        sd.update(load_file(str(f)))
    return sd


def test_linear_merge_matches_reference_and_loads_in_transformers(trio):
    root, sds = trio
    recipe = write_recipe(root / "r.yml", f"""
merge_method: linear
models:
  - model: {root}/ft1
    parameters: {{weight: 0.3}}
  - model: {root}/ft2
    parameters: {{weight: 0.5}}
dtype: float32
""")
    code, out, err = run_cli("merge", str(recipe), str(root / "out"))
    assert code == 0, err
    assert "merged" in out and "GB/s" in out
    got = load_dir(root / "out")
    assert set(got) == set(sds["ft1"])
    for k in got:
        ref = (0.3 * sds["ft1"][k] + 0.5 * sds["ft2"][k]) / 0.8
        torch.testing.assert_close(got[k], ref, rtol=1e-6, atol=1e-6)
    cfg = json.loads((root / "out" / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 2
    assert (root / "out" / "tokenizer.json").is_file() and "linear" in (root / "out" / "README.md").read_text()
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(root / "out")
    torch.testing.assert_close(model.model.layers[1].mlp.up_proj.weight.detach(), got["model.layers.1.mlp.up_proj.weight"])


def test_gradient_filters_and_bf16_chunked_streaming(tmp_path: Path):
    # big enough tensors that the executor streams them in several row chunks
    base = make_model(tmp_path / "a", hidden=64, vocab=20000, dtype=torch.bfloat16, seed=3)
    other = make_model(tmp_path / "b", hidden=64, vocab=20000, dtype=torch.bfloat16, seed=4, like=base)
    recipe = write_recipe(tmp_path / "r.yml", f"""
merge_method: linear
models:
  - model: {tmp_path}/a
    parameters:
      weight:
        - filter: mlp
          value: [0.0, 1.0]
        - value: 0.25
  - model: {tmp_path}/b
    parameters: {{weight: 1.0}}
parameters: {{normalize: false}}
""")
    code, _, err = run_cli("merge", str(recipe), str(tmp_path / "o"), "--threads", "2", "--quiet")
    assert code == 0, err
    got = load_dir(tmp_path / "o")
    assert got["model.embed_tokens.weight"].dtype == torch.bfloat16

    def ref(name: str, wa: float) -> torch.Tensor:
        return (wa * base[name] + other[name]).to(torch.bfloat16)

    assert torch.equal(got["model.embed_tokens.weight"], ref("model.embed_tokens.weight", 0.25))
    assert torch.equal(got["model.layers.0.mlp.up_proj.weight"], ref("model.layers.0.mlp.up_proj.weight", 0.0))
    assert torch.equal(got["model.layers.1.mlp.up_proj.weight"], ref("model.layers.1.mlp.up_proj.weight", 1.0))
    assert torch.equal(got["model.layers.1.self_attn.q_proj.weight"], ref("model.layers.1.self_attn.q_proj.weight", 0.25))


def test_sharded_output_dry_run_and_check(trio):
    root, sds = trio
    recipe = write_recipe(root / "r.yml", f"""
merge_method: ties
base_model: {root}/base
models:
  - model: {root}/ft1
    parameters: {{weight: 1.0, density: 0.5}}
  - model: {root}/ft2
    parameters: {{weight: 1.0, density: 0.5}}
dtype: float32
""")
    code, out, _ = run_cli("check", str(recipe))
    assert code == 0 and out.startswith("ok:")
    code, out, _ = run_cli("merge", str(recipe), str(root / "out"), "--dry-run")
    assert code == 0 and "model.layers.1.mlp.up_proj.weight" in out and "ties" in out and "density" in out
    assert not (root / "out").exists()
    code, _, err = run_cli("merge", str(recipe), str(root / "out"), "--out-shard-size", "4KB", "--quiet")
    assert code == 0, err
    index = json.loads((root / "out" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(root / "out")


def test_passthrough_frankenmerge_stacks_layers(trio):
    root, sds = trio
    recipe = write_recipe(root / "r.yml", f"""
merge_method: passthrough
slices:
  - sources: [{{model: {root}/ft1, layer_range: [0, 2]}}]
  - sources: [{{model: {root}/ft2, layer_range: [1, 2]}}]
dtype: float32
""")
    code, _, err = run_cli("merge", str(recipe), str(root / "out"), "-q")
    assert code == 0, err
    got = load_dir(root / "out")
    cfg = json.loads((root / "out" / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 3
    assert torch.equal(got["model.layers.2.mlp.up_proj.weight"], sds["ft2"]["model.layers.1.mlp.up_proj.weight"])
    assert torch.equal(got["model.layers.1.mlp.up_proj.weight"], sds["ft1"]["model.layers.1.mlp.up_proj.weight"])
    assert torch.equal(got["model.embed_tokens.weight"], sds["ft1"]["model.embed_tokens.weight"])
    assert torch.equal(got["lm_head.weight"], sds["ft2"]["lm_head.weight"])  # post weights from the last slice
    from transformers import AutoModelForCausalLM

    assert len(AutoModelForCausalLM.from_pretrained(root / "out").model.layers) == 3


def test_random_methods_reproducible_across_threads(trio):
    root, _ = trio
    text = f"""
merge_method: dare_ties
base_model: {root}/base
models:
  - model: {root}/ft1
    parameters: {{weight: 0.7, density: 0.5}}
  - model: {root}/ft2
    parameters: {{weight: 0.7, density: 0.5}}
dtype: float32
random_seed: 7
"""
    recipe = write_recipe(root / "r.yml", text)
    assert run_cli("merge", str(recipe), str(root / "a"), "-q", "--threads", "1")[0] == 0
    assert run_cli("merge", str(recipe), str(root / "b"), "-q", "--threads", "2")[0] == 0
    assert run_cli("merge", str(recipe), str(root / "c"), "-q", "--seed", "8")[0] == 0
    a, b, c = load_dir(root / "a"), load_dir(root / "b"), load_dir(root / "c")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("arch", ["gpt2", "bert"])
def test_other_architectures(tmp_path: Path, arch: str):
    base = make_model(tmp_path / "base", arch=arch)
    ft = make_model(tmp_path / "ft", arch=arch, seed=1, like=base)
    recipe = write_recipe(tmp_path / "r.yml", f"""
merge_method: slerp
base_model: {tmp_path}/base
models: [{{model: {tmp_path}/base}}, {{model: {tmp_path}/ft}}]
parameters: {{t: [0.0, 1.0]}}
dtype: float32
""")
    code, _, err = run_cli("merge", str(recipe), str(tmp_path / "o"), "-q")
    assert code == 0, err
    got = load_dir(tmp_path / "o")
    layer = "transformer.h.1.mlp.c_fc.weight" if arch == "gpt2" else "encoder.layer.1.output.dense.weight"
    layer0 = layer.replace(".1.", ".0.")
    torch.testing.assert_close(got[layer], ft[layer], rtol=1e-5, atol=1e-6)  # t=1 at the last layer
    torch.testing.assert_close(got[layer0], base[layer0], rtol=1e-5, atol=1e-6)  # t=0 at the first


def test_vocab_mismatch_needs_tokenizer_source(tmp_path: Path):
    base = make_model(tmp_path / "base", vocab=32)
    big = make_model(tmp_path / "big", vocab=40, seed=1)
    text = f"""
merge_method: linear
base_model: {tmp_path}/base
models:
  - model: {tmp_path}/base
    parameters: {{weight: 0.5}}
  - model: {tmp_path}/big
    parameters: {{weight: 0.5}}
dtype: float32
"""
    recipe = write_recipe(tmp_path / "r.yml", text)
    code, _, err = run_cli("merge", str(recipe), str(tmp_path / "o"))
    assert code != 0 and "model.embed_tokens.weight" in err and "tokenizer_source" in err
    write_recipe(recipe, text + "tokenizer_source: base\n")
    code, _, err = run_cli("merge", str(recipe), str(tmp_path / "o"), "-q")
    assert code == 0, err
    got = load_dir(tmp_path / "o")
    emb = got["model.embed_tokens.weight"]
    assert emb.shape == (32, 16)  # base vocabulary kept; tokens t0..t31 exist in both
    torch.testing.assert_close(emb, 0.5 * base["model.embed_tokens.weight"] + 0.5 * big["model.embed_tokens.weight"][:32])


def test_lora_input_in_recipe(tmp_path: Path):
    from test_io import _write_lora

    base = make_model(tmp_path / "base")
    q = "model.layers.0.self_attn.q_proj.weight"
    lt = _write_lora(tmp_path / "lora", {q: tuple(base[q].shape)}, r=2, alpha=4)
    recipe = write_recipe(tmp_path / "r.yml", f"""
merge_method: linear
models:
  - model: {tmp_path}/base+{tmp_path}/lora
    parameters: {{weight: 1.0}}
dtype: float32
""")
    code, _, err = run_cli("merge", str(recipe), str(tmp_path / "o"), "-q")
    assert code == 0, err
    a = lt["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"]
    b = lt["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"]
    torch.testing.assert_close(load_dir(tmp_path / "o")[q], base[q] + 2.0 * b @ a)


# ---------------------------------------------------------------------------------------------- bad inputs
def _count_calls(monkeypatch, obj, name: str) -> dict:
    """Patch obj.name to count its calls (proves a fast path ran)."""
    calls = {"n": 0}
    real = getattr(obj, name)

    def counting(*a, **k):  # noqa: ANN002, ANN003
        calls["n"] += 1
        return real(*a, **k)

    monkeypatch.setattr(obj, name, counting)
    return calls


def _poison(ckpt: Path, tensor: str, index: tuple[int, ...], value: float) -> None:
    """Write a NaN/Inf into one element of a single-file checkpoint."""
    from safetensors.torch import load_file as lf
    from safetensors.torch import save_file as sf

    f = ckpt / "model.safetensors"
    sd = lf(str(f))
    sd[tensor][index] = value
    sf(sd, str(f))


def _ties(root: Path, **over: str) -> str:
    d = {"m1": f"{root}/ft1", "m2": f"{root}/ft2", "method": "ties", "p1": "weight: 1.0, density: 0.5", "extra": ""}
    d.update(over)
    return f"""
merge_method: {d['method']}
base_model: {root}/base
models:
  - model: {d['m1']}
    parameters: {{{d['p1']}}}
  - model: {d['m2']}
    parameters: {{weight: 1.0, density: 0.5}}
dtype: float32
{d['extra']}"""


def _corrupt_truncate(root: Path) -> None:
    f = root / "ft1" / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-64])


def _mismatch_shape(root: Path) -> None:
    make_model(root / "ft1", hidden=8, seed=5)


def _mismatch_names(root: Path) -> None:
    for f in (root / "ft1").glob("*.safetensors"):
        f.unlink()
    make_model(root / "ft1", arch="gpt2", seed=5)


def _nan(root: Path) -> None:
    sd = load_file(str(root / "ft1" / "model.safetensors"))
    sd["model.layers.1.mlp.up_proj.weight"][3, 4] = float("nan")
    from safetensors.torch import save_file

    save_file(sd, str(root / "ft1" / "model.safetensors"))


def _missing_shard(root: Path) -> None:
    (root / "ft2" / "model-00001-of-00002.safetensors").unlink()


BAD = {
    "missing model path": ({"m1": "/nonexistent/model"}, None, "not found"),
    "missing shard": ({}, _missing_shard, "model-00001-of-00002.safetensors"),
    "truncated safetensors": ({}, _corrupt_truncate, "truncated"),
    "mismatched shapes": ({}, _mismatch_shape, "Shape mismatch"),
    "mismatched names": ({}, _mismatch_names, "same architecture?"),
    "unknown method": ({"method": "tiez"}, None, 'Did you mean "ties"'),
    "typo'd parameter": ({"p1": "weight: 1.0, densty: 0.5"}, None, 'Did you mean "density"'),
    "missing required parameter": ({"p1": "density: 0.5"}, None, "weight"),
    "density outside [0,1]": ({"p1": "weight: 1.0, density: 1.5"}, None, "density"),
    "NaN in input": ({}, _nan, "NaN"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_inputs_fail_cleanly(trio, case: str):
    root, _ = trio
    over, mutate, needle = BAD[case]
    if mutate:
        mutate(root)
    recipe = write_recipe(root / "r.yml", _ties(root, **over))
    before = {m: snapshot(root / m) for m in ("base", "ft1", "ft2")}
    code, out, err = run_cli("merge", str(recipe), str(root / "out"))
    assert code != 0
    assert needle in err, err
    assert "Traceback" not in err and "error: " in err
    assert "\n\n" not in err[err.index("error: "):].strip()  # one paragraph
    assert not (root / "out").exists()
    assert [p.name for p in root.iterdir() if p.name.startswith(".out")] == []  # no temp dir left
    assert {m: snapshot(root / m) for m in ("base", "ft1", "ft2")} == before


def test_existing_output_and_overwrite(trio):
    root, _ = trio
    recipe = write_recipe(root / "r.yml", _ties(root))
    (root / "out").mkdir()
    (root / "out" / "keep.txt").write_text("mine")
    (root / "out" / "model.safetensors").write_bytes(b"old")  # --overwrite replaces only a model dir
    code, _, err = run_cli("merge", str(recipe), str(root / "out"))
    assert code != 0 and "--overwrite" in err and (root / "out" / "keep.txt").read_text() == "mine"
    code, _, err = run_cli("merge", str(recipe), str(root / "out"), "--overwrite", "-q")
    assert code == 0, err
    assert not (root / "out" / "keep.txt").exists() and (root / "out" / "model.safetensors").exists()


def test_unwritable_output_and_failure_midway(trio, monkeypatch):
    root, _ = trio
    recipe = write_recipe(root / "r.yml", _ties(root))
    code, _, err = run_cli("merge", str(recipe), "/proc/modelmix-out")
    assert code != 0 and "error:" in err and "Traceback" not in err
    # a failure in the middle of the merge leaves no partial model
    import modelmix.execute as ex

    calls = {"n": 0}
    real = ex.Executor.compute

    def flaky(self, task, rows=None):
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError(28, "No space left on device")
        return real(self, task, rows)

    monkeypatch.setattr(ex.Executor, "compute", flaky)
    with pytest.raises(OSError):
        main(["merge", str(recipe), str(root / "out"), "-q", "--threads", "1"])
    assert not (root / "out").exists()
    assert [p.name for p in root.iterdir() if "modelmix" in p.name] == []


def test_debug_shows_traceback(trio):
    root, _ = trio
    recipe = write_recipe(root / "r.yml", _ties(root, method="tiez"))
    proc = subprocess.run([sys.executable, "-m", "modelmix.cli", "--debug", "merge", str(recipe), str(root / "o")],
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_cli_does_not_import_transformers(trio):
    root, _ = trio
    recipe = write_recipe(root / "r.yml", _ties(root))
    code = (
        "import sys\nfrom modelmix.cli import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
        "assert 'transformers' not in sys.modules, 'transformers imported'\n"
    )
    for args in (["--help"], ["merge", str(recipe), str(root / "o"), "-q"]):
        proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
    assert (root / "o" / "model.safetensors").exists()


def test_merge_tensors_api_on_state_dicts(trio):
    import modelmix

    _, sds = trio
    out = modelmix.merge_tensors("linear", [sds["ft1"], sds["ft2"]], weight=[1.0, 3.0])
    k = "model.layers.0.mlp.up_proj.weight"
    torch.testing.assert_close(out[k], (sds["ft1"][k] + 3 * sds["ft2"][k]) / 4)
    one = modelmix.merge_tensors("task_arithmetic", [sds["ft1"][k]], base=sds["base"][k], weight=0.5)
    torch.testing.assert_close(one, sds["base"][k] + 0.5 * (sds["ft1"][k] - sds["base"][k]))


@pytest.mark.cuda
def test_cuda_matches_cpu(trio):
    root, _ = trio
    recipe = write_recipe(root / "r.yml", _ties(root))
    assert run_cli("merge", str(recipe), str(root / "cpu"), "-q")[0] == 0
    assert run_cli("merge", str(recipe), str(root / "gpu"), "-q", "--device", "cuda")[0] == 0
    a, b = load_dir(root / "cpu"), load_dir(root / "gpu")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method,params", [
    ("ties", "weight: 1.0, density: 0.4"),
    ("dare_ties", "weight: 0.8, density: 0.5"),
    ("breadcrumbs_ties", "weight: 1.0, density: 0.5, gamma: 0.05"),
    ("della", "weight: 1.0, density: 0.5, epsilon: 0.1"),
    ("slerp", None),
])
def test_streamed_chunks_equal_whole_tensor(trio, monkeypatch, method, params):
    """Forcing tiny chunks routes tensors through the multi-pass streamers: same result as whole tensors."""
    import modelmix.execute as ex

    root, _ = trio
    if method == "slerp":
        text = f"merge_method: slerp\nbase_model: {root}/base\nmodels: [{{model: {root}/base}}, {{model: {root}/ft1}}]\nparameters: {{t: 0.3}}\ndtype: float32\n"
    else:
        text = _ties(root, method=method, p1=params).replace("weight: 1.0, density: 0.5}", params + "}")
    recipe = write_recipe(root / "r.yml", text + "random_seed: 3\n")
    assert run_cli("merge", str(recipe), str(root / "whole"), "-q")[0] == 0
    monkeypatch.setattr(ex, "CHUNK_ELEMS", 40)
    code, _, err = run_cli("merge", str(recipe), str(root / "chunked"), "-q", "--threads", "2")
    assert code == 0, err
    a, b = load_dir(root / "whole"), load_dir(root / "chunked")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    # streamed tensors are cached in float32 after their first pass when small enough; without the cache
    # every pass re-reads the files: identical bits either way
    monkeypatch.setattr(ex, "STREAM_CACHE_BYTES", 0)
    code, _, err = run_cli("merge", str(recipe), str(root / "uncached"), "-q", "--threads", "2")
    assert code == 0, err
    c = load_dir(root / "uncached")
    assert all(torch.equal(b[k], c[k]) for k in b)


def test_tensor_missing_from_some_models_is_merged_over_the_others(trio):
    """A few tensors absent from one model (not a different architecture): merged over the models that have
    them, with a note; the base lacking one means it is copied from the first model that has it."""
    from safetensors.torch import save_file

    root, sds = trio
    k = "model.layers.1.mlp.up_proj.weight"
    sd = load_file(str(root / "ft1" / "model.safetensors"))
    del sd[k]
    save_file(sd, str(root / "ft1" / "model.safetensors"))
    recipe = write_recipe(root / "r.yml", f"""
merge_method: linear
models:
  - model: {root}/ft1
    parameters: {{weight: 0.3}}
  - model: {root}/ft2
    parameters: {{weight: 0.5}}
dtype: float32
""")
    code, out, err = run_cli("merge", str(recipe), str(root / "out"))
    assert code == 0, err
    assert "note:" in err and k in err
    got = load_dir(root / "out")
    torch.testing.assert_close(got[k], sds["ft2"][k])  # normalised over the one model that has it
    other = "model.layers.0.mlp.up_proj.weight"
    torch.testing.assert_close(got[other], (0.3 * sds["ft1"][other] + 0.5 * sds["ft2"][other]) / 0.8)
    # ties with the tensor missing from the base: copied from the first model that has it
    sd = load_file(str(root / "base" / "model.safetensors"))
    del sd["model.norm.weight"]
    save_file(sd, str(root / "base" / "model.safetensors"))
    code, out, err = run_cli("merge", str(write_recipe(root / "t.yml", _ties(root))), str(root / "t"))
    assert code == 0, err
    assert "missing from the base model" in err
    torch.testing.assert_close(load_dir(root / "t")["model.norm.weight"], sds["ft1"]["model.norm.weight"])


def test_bf16_inputs_fused_conversion_and_nan_detection(tmp_path: Path, monkeypatch):
    """bf16 checkpoints go through the fused bit-shift conversion (TIES loads the numba kernels): the result
    equals a float32 copy of the same inputs, and a NaN in a bf16 input is still reported by name."""
    import numpy as np

    from modelmix.kernels import fused

    if not fused.AVAILABLE:
        pytest.skip("numba not installed")
    raw = torch.randint(-(1 << 15), 1 << 15, (5000,), dtype=torch.int32).to(torch.int16)
    out = np.empty(5000, dtype=np.uint32)
    finite = fused.bf16_to_f32(raw.numpy().view(np.uint16), out)
    ref = raw.view(torch.bfloat16).float()
    assert torch.equal(torch.from_numpy(out.view(np.float32)).nan_to_num(7.0), ref.nan_to_num(7.0))
    assert finite == bool(torch.isfinite(ref).all())
    assert fused.bf16_to_f32(torch.ones(9, dtype=torch.bfloat16).view(torch.int16).numpy().view(np.uint16),
                             np.empty(9, dtype=np.uint32))

    import modelmix
    import modelmix.execute as ex

    base = make_model(tmp_path / "base", dtype=torch.bfloat16)
    fts = [make_model(tmp_path / f"ft{i}", like=base, seed=i, dtype=torch.bfloat16) for i in (1, 2)]
    text = _ties(tmp_path).replace("dtype: float32", "dtype: float32\nout_dtype: float32")
    recipe = write_recipe(tmp_path / "r.yml", text)
    monkeypatch.setattr(ex, "CHUNK_ELEMS", 64)  # stream (and cache) every matrix in row chunks
    code, _, err = run_cli("merge", str(recipe), str(tmp_path / "out"), "-q")
    assert code == 0, err
    got = load_dir(tmp_path / "out")
    ref = modelmix.merge_tensors("ties", fts, base=base, weight=1.0, density=0.5)
    for k in got:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-5, atol=1e-6)
    k = "model.layers.1.mlp.up_proj.weight"
    _poison(tmp_path / "ft2", k, (3, 5), float("nan"))
    code, _, err = run_cli("merge", str(recipe), str(tmp_path / "bad"), "-q")
    assert code != 0 and k in err and "NaN" in err and not (tmp_path / "bad").exists()


@pytest.mark.parametrize("normalize,out_dtype", [(True, "bfloat16"), (False, "float32")])
def test_linear_bf16_one_pass_kernel_is_bit_identical(tmp_path: Path, monkeypatch, normalize, out_dtype):
    """The compiled one-pass linear kernel for bf16 inputs gives exactly the torch reference's bits, and
    a NaN in an input still produces the usual error (the generic path reports it)."""
    import modelmix.execute as ex
    from modelmix.kernels import backend

    K = backend._get("c")
    if K is None or not K.HAS_FMA:
        pytest.skip("compiled kernels (with FMA) not available")
    base = make_model(tmp_path / "m0", dtype=torch.bfloat16, vocab=67)
    for i in (1, 2):
        make_model(tmp_path / f"m{i}", like=base, seed=i, dtype=torch.bfloat16, vocab=67)
    text = f"""
merge_method: linear
models:
  - model: {tmp_path}/m0
    parameters: {{weight: 0.3}}
  - model: {tmp_path}/m1
    parameters: {{weight: 1.7}}
  - model: {tmp_path}/m2
    parameters: {{weight: 0.45}}
parameters: {{normalize: {str(normalize).lower()}}}
dtype: float32
out_dtype: {out_dtype}
"""
    recipe = write_recipe(tmp_path / "r.yml", text)
    monkeypatch.setattr(ex, "CHUNK_ELEMS", 100)  # many row chunks, ragged last ones
    calls = _count_calls(monkeypatch, K, "linear_bf16")
    assert run_cli("merge", str(recipe), str(tmp_path / "fast"), "-q")[0] == 0
    assert calls["n"] > 0
    monkeypatch.setattr(backend, "FORCE", "torch")
    assert run_cli("merge", str(recipe), str(tmp_path / "ref"), "-q")[0] == 0
    a, b = load_dir(tmp_path / "fast"), load_dir(tmp_path / "ref")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    monkeypatch.setattr(backend, "FORCE", None)
    _poison(tmp_path / "m1", "model.embed_tokens.weight", (40, 3), float("inf"))
    code, _, err = run_cli("merge", str(recipe), str(tmp_path / "bad"), "-q")
    assert code != 0 and "model.embed_tokens.weight" in err and "NaN/Inf" in err


def test_slerp_bf16_raw_path_matches_float32_path(tmp_path: Path, monkeypatch):
    """SLERP over bf16 checkpoints runs from the raw bits (compiled kernels) and equals the float32 path;
    a NaN is still reported with the tensor's name."""
    import modelmix.execute as ex
    from modelmix.kernels import backend

    K = backend._get("c")
    if K is None:
        pytest.skip("compiled kernels not available")
    base = make_model(tmp_path / "a", dtype=torch.bfloat16, vocab=67)
    make_model(tmp_path / "b", like=base, seed=3, dtype=torch.bfloat16, vocab=67, delta=0.5)
    text = (f"merge_method: slerp\nbase_model: {tmp_path}/a\nmodels: [{{model: {tmp_path}/a}}, {{model: {tmp_path}/b}}]\n"
            "parameters: {t: [0.2, 0.7]}\ndtype: bfloat16\n")
    recipe = write_recipe(tmp_path / "r.yml", text)
    monkeypatch.setattr(ex, "CHUNK_ELEMS", 64)  # stream every matrix in row chunks
    calls = _count_calls(monkeypatch, K, "axpby_bf16")
    assert run_cli("merge", str(recipe), str(tmp_path / "raw"), "-q")[0] == 0
    assert calls["n"] > 0
    monkeypatch.setattr(backend, "FORCE", "torch")
    assert run_cli("merge", str(recipe), str(tmp_path / "ref"), "-q")[0] == 0
    monkeypatch.setattr(backend, "FORCE", None)
    a, b = load_dir(tmp_path / "raw"), load_dir(tmp_path / "ref")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-2, atol=1e-3)  # bf16 output: one ulp at most
        assert (a[k] != b[k]).float().mean() < 0.01
    _poison(tmp_path / "b", "model.layers.1.mlp.down_proj.weight", (2, 1), float("nan"))
    code, _, err = run_cli("merge", str(recipe), str(tmp_path / "bad"), "-q")
    assert code != 0 and "model.layers.1.mlp.down_proj.weight" in err and "NaN/Inf" in err


def test_linear_bf16_zero_weight_sum_reported_like_generic_path(tmp_path: Path):
    base = make_model(tmp_path / "m0", dtype=torch.bfloat16)
    make_model(tmp_path / "m1", like=base, seed=1, dtype=torch.bfloat16)
    text = f"""
merge_method: linear
models:
  - model: {tmp_path}/m0
    parameters: {{weight: 1.0}}
  - model: {tmp_path}/m1
    parameters: {{weight: -1.0}}
dtype: bfloat16
"""
    recipe = write_recipe(tmp_path / "r.yml", text)
    code, _, err = run_cli("merge", str(recipe), str(tmp_path / "out"), "-q")
    flat = " ".join(err.split())
    assert code != 0 and "sum to zero" in flat and "Tensor '" in flat and not (tmp_path / "out").exists()


@pytest.mark.parametrize("recipe_tail", [
    "merge_method: model_stock\nbase_model: {r}/base\nmodels: [{{model: {r}/ft1}}, {{model: {r}/ft2}}]\n",
    "merge_method: model_stock\nbase_model: {r}/base\nmodels: [{{model: {r}/ft1}}, {{model: {r}/ft2}}]\n"
    "parameters: {{filter_wise: true}}\n",
    "merge_method: nuslerp\nmodels: [{{model: {r}/ft1, parameters: {{weight: 0.4}}}}, {{model: {r}/ft2, parameters: {{weight: 0.6}}}}]\n",
    "merge_method: nuslerp\nbase_model: {r}/base\nmodels: [{{model: {r}/ft1, parameters: {{weight: 0.4}}}}, "
    "{{model: {r}/ft2, parameters: {{weight: 0.6}}}}]\nparameters: {{nuslerp_flatten: false, nuslerp_row_wise: true}}\n",
])
def test_model_stock_and_nuslerp_stream_like_whole_tensors(trio, monkeypatch, recipe_tail):
    import modelmix.execute as ex

    root, _ = trio
    recipe = write_recipe(root / "r.yml", recipe_tail.format(r=root) + "dtype: float32\n")
    assert run_cli("merge", str(recipe), str(root / "whole"), "-q")[0] == 0
    monkeypatch.setattr(ex, "CHUNK_ELEMS", 40)  # every matrix goes through the streamer in row chunks
    calls = _count_calls(monkeypatch, ex.Executor, "_stream")
    code, _, err = run_cli("merge", str(recipe), str(root / "chunked"), "-q", "--threads", "2")
    assert code == 0, err
    assert calls["n"] > 0
    a, b = load_dir(root / "whole"), load_dir(root / "chunked")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-5)
