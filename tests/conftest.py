"""Shared fixtures: tiny checkpoints the tests build themselves (offline, seconds)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``@pytest.mark.cuda`` tests run where torch sees a GPU and are skipped, saying why, elsewhere (the one
    place that decides it); ``slow`` ones run by default, CI included (``-m "not slow"`` leaves them out)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (marker: cuda)")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


def llama_shapes(layers: int = 2, hidden: int = 16, inter: int = 24, vocab: int = 32) -> dict[str, tuple[int, ...]]:
    s: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, hidden)}
    kv = hidden // 2
    for i in range(layers):
        p = f"model.layers.{i}."
        s.update({
            p + "self_attn.q_proj.weight": (hidden, hidden),
            p + "self_attn.k_proj.weight": (kv, hidden),
            p + "self_attn.v_proj.weight": (kv, hidden),
            p + "self_attn.o_proj.weight": (hidden, hidden),
            p + "mlp.gate_proj.weight": (inter, hidden),
            p + "mlp.up_proj.weight": (inter, hidden),
            p + "mlp.down_proj.weight": (hidden, inter),
            p + "input_layernorm.weight": (hidden,),
            p + "post_attention_layernorm.weight": (hidden,),
        })
    s["model.norm.weight"] = (hidden,)
    s["lm_head.weight"] = (vocab, hidden)
    return s


def llama_config(layers: int = 2, hidden: int = 16, inter: int = 24, vocab: int = 32) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
        "intermediate_size": inter, "num_hidden_layers": layers, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": vocab, "max_position_embeddings": 64, "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False, "torch_dtype": "float32", "bos_token_id": 1, "eos_token_id": 2,
        "head_dim": hidden // 4,
    }


def gpt2_shapes(layers: int = 2, hidden: int = 16, vocab: int = 32) -> dict[str, tuple[int, ...]]:
    s: dict[str, tuple[int, ...]] = {"transformer.wte.weight": (vocab, hidden), "transformer.wpe.weight": (64, hidden)}
    for i in range(layers):
        p = f"transformer.h.{i}."
        s.update({p + "ln_1.weight": (hidden,), p + "ln_1.bias": (hidden,), p + "attn.c_attn.weight": (hidden, 3 * hidden),
                  p + "attn.c_attn.bias": (3 * hidden,), p + "attn.c_proj.weight": (hidden, hidden), p + "attn.c_proj.bias": (hidden,),
                  p + "ln_2.weight": (hidden,), p + "ln_2.bias": (hidden,), p + "mlp.c_fc.weight": (hidden, 4 * hidden),
                  p + "mlp.c_fc.bias": (4 * hidden,), p + "mlp.c_proj.weight": (4 * hidden, hidden), p + "mlp.c_proj.bias": (hidden,)})
    s["transformer.ln_f.weight"] = (hidden,)
    s["transformer.ln_f.bias"] = (hidden,)
    return s


def bert_shapes(layers: int = 2, hidden: int = 16, vocab: int = 32) -> dict[str, tuple[int, ...]]:
    s: dict[str, tuple[int, ...]] = {
        "embeddings.word_embeddings.weight": (vocab, hidden), "embeddings.position_embeddings.weight": (64, hidden),
        "embeddings.token_type_embeddings.weight": (2, hidden), "embeddings.LayerNorm.weight": (hidden,),
        "embeddings.LayerNorm.bias": (hidden,),
    }
    for i in range(layers):
        p = f"encoder.layer.{i}."
        for n, shp in (("attention.self.query", (hidden, hidden)), ("attention.self.key", (hidden, hidden)),
                       ("attention.self.value", (hidden, hidden)), ("attention.output.dense", (hidden, hidden)),
                       ("intermediate.dense", (4 * hidden, hidden)), ("output.dense", (hidden, 4 * hidden))):
            s[p + n + ".weight"] = shp
            s[p + n + ".bias"] = (shp[0],)
        for n in ("attention.output.LayerNorm", "output.LayerNorm"):
            s[p + n + ".weight"] = (hidden,)
            s[p + n + ".bias"] = (hidden,)
    s["pooler.dense.weight"] = (hidden, hidden)
    s["pooler.dense.bias"] = (hidden,)
    return s


def write_tokenizer(d: Path, vocab: int) -> None:
    """A tiny WordLevel tokenizer.json with ``vocab`` tokens (t0, t1, ...) so vocab alignment can be tested."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab)}, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))


def make_model(
    d: Path,
    *,
    arch: str = "llama",
    layers: int = 2,
    hidden: int = 16,
    vocab: int = 32,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    shards: int = 1,
    like: dict[str, torch.Tensor] | None = None,
    delta: float = 0.05,
    tokenizer: bool = True,
) -> dict[str, torch.Tensor]:
    """Write a random checkpoint (or ``like`` + seeded noise of scale ``delta``) and return its tensors."""
    d.mkdir(parents=True, exist_ok=True)
    shapes = {"llama": llama_shapes, "gpt2": gpt2_shapes, "bert": bert_shapes}[arch](layers=layers, hidden=hidden, vocab=vocab)
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    for name, shp in shapes.items():
        if like is not None and name in like and tuple(like[name].shape) == shp:
            t = like[name].float() + delta * torch.randn(shp, generator=g)
        else:
            t = torch.randn(shp, generator=g) * 0.1
        sd[name] = t.to(dtype).contiguous()
    names = list(sd)
    if shards == 1:
        save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
    else:
        per = -(-len(names) // shards)
        weight_map = {}
        for i in range(shards):
            part = names[i * per : (i + 1) * per]
            fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
            save_file({n: sd[n] for n in part}, str(d / fname), metadata={"format": "pt"})
            weight_map.update({n: fname for n in part})
        (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    if arch == "llama":
        cfg = llama_config(layers=layers, hidden=hidden, inter=24, vocab=vocab)
        cfg["torch_dtype"] = str(dtype).removeprefix("torch.")
    elif arch == "gpt2":
        cfg = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_layer": layers, "n_embd": hidden, "vocab_size": vocab, "n_head": 4, "n_positions": 64}
    else:
        cfg = {"architectures": ["BertModel"], "model_type": "bert", "num_hidden_layers": layers, "hidden_size": hidden, "vocab_size": vocab,
               "num_attention_heads": 4, "intermediate_size": 4 * hidden, "max_position_embeddings": 64}
    (d / "config.json").write_text(json.dumps(cfg))
    if tokenizer:
        write_tokenizer(d, vocab)
    return {k: v.float() for k, v in sd.items()}


@pytest.fixture(scope="session")
def zoo_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mmcache")


@pytest.fixture(scope="session")
def zoo_dir(zoo_cache: Path, tmp_path_factory: pytest.TempPathFactory):
    """The test-preset zoo, built once per session (about a minute) under a temporary MODELMIX_CACHE."""
    from modelmix.zoo import build_zoo

    mp = pytest.MonkeyPatch()
    mp.setenv("MODELMIX_CACHE", str(zoo_cache))
    mp.setenv("MODELMIX_ZOO_WORKERS", "2")  # the fine-tunes in worker processes (test_zoo compares in-process)
    out = tmp_path_factory.mktemp("zoo") / "z"
    build_zoo(out, preset="test", seed=0, progress=False)
    yield out
    mp.undo()


@pytest.fixture()
def cache_env(zoo_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MODELMIX_CACHE", str(zoo_cache))
    return zoo_cache


@pytest.fixture
def trio(tmp_path: Path):
    """base + two fine-tunes (float32 llama, tiny) -> (dir, {name: state_dict})."""
    base = make_model(tmp_path / "base", seed=0)
    ft1 = make_model(tmp_path / "ft1", seed=1, like=base)
    ft2 = make_model(tmp_path / "ft2", seed=2, like=base, shards=2)
    return tmp_path, {"base": base, "ft1": ft1, "ft2": ft2}


def run_cli(*args: str) -> tuple[int, str, str]:
    """Run the modelmix CLI in-process; returns (exit code, stdout, stderr)."""
    import contextlib
    import io

    from modelmix.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(args))
        except SystemExit as e:
            code = int(e.code or 0)
    return code, out.getvalue(), err.getvalue()


def write_recipe(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def snapshot(d: Path) -> dict[str, bytes]:
    """Every file's bytes under d (to prove inputs were not modified)."""
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now (for servers the tests start)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
