"""LM-Cocktail: weights vs hand-computed losses, CLI, merge correctness, encoders, layer search, bad inputs."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from modelmix.cli import main
from modelmix.errors import ModelmixError
from modelmix.eval._tiny import save_tiny_llama
from modelmix.weighting.cocktail import compute_weights, merge_with_weights, mix, split_indices, tensor_groups

CHARS = "0123456789+=? abcdefghijklmnopqrstuvwxyz"
DEC_EXAMPLES = [
    {"input": "1+2=", "output": "3"}, {"input": "12+30=", "output": "42"}, {"input": "what is 7+8?", "output": "15"},
    {"input": "9+9=", "output": "18"}, {"input": "20+22=", "output": "42"}, {"input": "5+0=", "output": "5"},
    {"input": "abc", "output": "def"},
]


def char_tokenizer(chars: str = CHARS, kind: str = "decoder"):
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>"] if kind == "decoder" else ["[PAD]", "[CLS]", "[SEP]", "[UNK]"]
    vocab = {t: i for i, t in enumerate(specials)}
    for c in chars:
        vocab[c] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=specials[3]))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    if kind == "decoder":
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
        return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                       unk_token="<unk>")
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 1), ("[SEP]", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
                                   unk_token="[UNK]")


def save_llama(path: Path, seed: int, init: float, hidden: int = 16, chars: str = CHARS) -> Path:
    return save_tiny_llama(path, hidden=hidden, layers=2, heads=4, kv_heads=2, intermediate=32, seed=seed,
                           init=init, chars=chars, max_positions=128)


@pytest.fixture(scope="module")
def dec(tmp_path_factory) -> tuple[list[Path], Path]:
    d = tmp_path_factory.mktemp("cocktail_dec")
    models = [save_llama(d / f"m{i}", seed=i, init=init) for i, init in enumerate([0.3, 0.02, 0.8])]
    ex = d / "ex.jsonl"
    ex.write_text("".join(json.dumps(e) + "\n" for e in DEC_EXAMPLES))
    return models, ex


def hand_decoder_loss(path: Path, examples: list[dict], batch_size: int = 2) -> float:
    """LM-Cocktail's llm_loss written out independently (padding to the batch's longest row)."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(str(path))
    model = LlamaForCausalLM.from_pretrained(str(path)).eval()
    rows = []
    for e in examples:
        ids = tok.encode(e["input"] + " " + e["output"]) + [tok.eos_token_id]
        n_prompt = len(tok.encode(e["input"]))
        rows.append((ids, [-100] * n_prompt + ids[n_prompt:]))
    total = []
    with torch.no_grad():
        for i in range(0, len(rows), batch_size):
            chunk = rows[i : i + batch_size]
            w = max(len(r[0]) for r in chunk)
            ids = torch.tensor([r[0] + [tok.pad_token_id] * (w - len(r[0])) for r in chunk])
            labels = torch.tensor([r[1] + [-100] * (w - len(r[1])) for r in chunk])
            total.append(float(model(input_ids=ids, attention_mask=ids.ne(tok.pad_token_id), labels=labels).loss))
    return sum(total) / len(total)


def test_weights_are_softmax_of_hand_losses(dec):
    models, ex = dec
    r = compute_weights(models, ex)
    hand = [hand_decoder_loss(m, DEC_EXAMPLES) for m in models]
    assert r.losses == pytest.approx(hand, abs=1e-4)
    z = [math.exp(-v / 5.0) for v in hand]
    assert r.weights == pytest.approx([v / sum(z) for v in z], abs=1e-5)
    assert sum(r.weights) == pytest.approx(1.0)
    order_w = sorted(range(3), key=lambda i: -r.weights[i])
    order_l = sorted(range(3), key=lambda i: r.losses[i])
    assert order_w == order_l and len(set(r.losses)) == 3
    r2 = compute_weights(models, ex, temperature=0.5, batch_size=3)
    hand3 = [hand_decoder_loss(m, DEC_EXAMPLES, batch_size=3) for m in models]
    assert r2.losses == pytest.approx(hand3, abs=1e-4)


def test_cli_weights_only_json(dec, capsys, tmp_path):
    models, ex = dec
    main(["cocktail", "--models", *map(str, models), "--examples", str(ex), "--weights-only"])
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"weights", "losses", "models"}
    assert out["models"] == [str(m) for m in models]
    assert len(out["weights"]) == len(out["losses"]) == 3
    assert sum(out["weights"]) == pytest.approx(1.0)
    assert list(tmp_path.iterdir()) == []


def _weighted(models: list[Path], ws: list[float]) -> dict[str, torch.Tensor]:
    sds = [load_file(str(m / "model.safetensors")) for m in models]
    s = sum(ws)
    return {k: sum(w / s * sd[k].double() for w, sd in zip(ws, sds, strict=True)) for k in sds[0]}


def test_merge_equals_weighted_average(dec, tmp_path, capsys):
    models, ex = dec
    out = tmp_path / "given"
    main(["cocktail", "--models", *map(str, models), "--weights", "0.7", "0.2", "0.1", "--out", str(out)])
    merged = load_file(str(out / "model.safetensors"))
    for k, v in _weighted(models, [0.7, 0.2, 0.1]).items():
        assert torch.allclose(merged[k].double(), v, atol=1e-6), k
    assert (out / "tokenizer.json").is_file() and (out / "config.json").is_file()
    # computed weights: the written model is the weighted average with exactly those weights
    out2 = mix(models, tmp_path / "auto", examples=ex)
    r = compute_weights(models, ex)
    merged = load_file(str(out2 / "model.safetensors"))
    for k, v in _weighted(models, r.weights).items():
        assert torch.allclose(merged[k].double(), v, atol=1e-6), k
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(str(out2))


def test_layer_recipe_is_exact_per_group(dec, tmp_path):
    models, _ = dec
    names = list(load_file(str(models[0] / "model.safetensors")))
    members, filters = tensor_groups(names, blocks=2)
    assert list(members) == ["embeddings", "layers_0-0", "layers_1-1", "head"]
    lw = {g: [0.2 + 0.1 * j, 0.5, 0.3 - 0.1 * j] for j, g in enumerate(members)}
    merge_with_weights(models, tmp_path / "lw", [1 / 3] * 3, layer_weights=lw, groups=filters)
    merged = load_file(str(tmp_path / "lw" / "model.safetensors"))
    for g, names_g in members.items():
        ref = _weighted(models, lw[g])
        for n in names_g:
            assert torch.allclose(merged[n].double(), ref[n], atol=1e-6), (g, n)


def test_layer_granularity_keeps_better_heldout(dec, capsys, tmp_path):
    models, ex = dec
    r = compute_weights(models, ex, granularity="layer", budget=12)
    s = r.search
    assert s["fit_examples"] == [0, 1, 3, 4, 6] and s["heldout_examples"] == [2, 5]
    kept = s["layer_level"] if s["kept"] == "layer" else s["model_level"]
    assert kept["heldout_loss"] <= s["model_level"]["heldout_loss"]
    assert s["layer_level"]["fit_loss"] <= s["model_level"]["fit_loss"] + 1e-12
    assert s["evaluations"] <= 12
    assert (r.layer_weights is not None) == (s["kept"] == "layer")
    for ws in s["layer_level"]["weights"].values():
        assert sum(ws) == pytest.approx(1.0)
    assert split_indices(2) == ([0], [1])
    main(["cocktail", "--models", *map(str, models), "--examples", str(ex), "--granularity", "layer", "--budget", "4",
          "--out", str(tmp_path / "o")])
    assert "held-out loss: model-level" in capsys.readouterr().out
    assert (tmp_path / "o" / "model.safetensors").is_file()


# ------------------------------------------------------------------------------------------ encoders
ENC_EXAMPLES = [
    {"query": "cats", "pos": ["a cat is here"], "neg": ["bees fly", "rivers run", "the sun", "snow"]},
    {"query": "bees", "pos": ["bees make honey"], "neg": ["a cat", "a dog", "rain falls", "wind"]},
    {"query": "rain", "pos": ["rain is wet"], "neg": ["dry sand", "cats nap", "fire", "ice"]},
]


@pytest.fixture(scope="module")
def enc(tmp_path_factory) -> tuple[list[Path], Path]:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers import models as stm
    from transformers import BertConfig, BertModel

    d = tmp_path_factory.mktemp("cocktail_enc")
    tok = char_tokenizer(kind="encoder")
    cfg = BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=64, pad_token_id=0)
    paths = []
    for i in range(2):
        torch.manual_seed(10 + i)
        raw = d / f"raw{i}"
        BertModel(cfg).save_pretrained(str(raw))
        tok.save_pretrained(str(raw))
        t = stm.Transformer(str(raw), max_seq_length=64)
        st = SentenceTransformer(modules=[t, stm.Pooling(16, pooling_mode="cls")], device="cpu")
        st.save(str(d / f"st{i}"))
        paths.append(d / f"st{i}")
    ex = d / "enc.jsonl"
    ex.write_text("".join(json.dumps(e) + "\n" for e in ENC_EXAMPLES))
    return paths, ex


def hand_encoder_loss(path: Path, examples: list[dict], neg_number: int, seed: int) -> float:
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    model = AutoModel.from_pretrained(str(path)).eval()
    rng = random.Random(seed)
    rows = [(e["query"], [e["pos"][0], *rng.sample(e["neg"], neg_number)]) for e in examples]

    def emb(texts):
        x = tok(texts, padding=True, return_tensors="pt")
        return torch.nn.functional.normalize(model(**x).last_hidden_state[:, 0], dim=-1)

    losses = []
    with torch.no_grad():
        for i in range(0, len(rows), 2):
            chunk = rows[i : i + 2]
            q = emb([c[0] for c in chunk])
            p = emb([t for c in chunk for t in c[1]])
            target = torch.arange(len(chunk)) * (neg_number + 1)
            losses.append(float(torch.nn.functional.cross_entropy(q @ p.T / 0.05, target)))
    return sum(losses) / len(losses)


def test_encoder_weights_and_sentence_transformers_merge(enc, tmp_path):
    from sentence_transformers import SentenceTransformer

    models, ex = enc
    r = compute_weights(models, ex, type="encoder", neg_number=3, seed=1)
    hand = [hand_encoder_loss(m, ENC_EXAMPLES, 3, 1) for m in models]
    assert r.losses == pytest.approx(hand, abs=1e-4)
    assert sum(r.weights) == pytest.approx(1.0)
    out = mix(models, tmp_path / "enc_out", examples=ex, type="encoder", neg_number=3, seed=1)
    merged = load_file(str(out / "model.safetensors"))
    for k, v in _weighted(models, r.weights).items():
        assert torch.allclose(merged[k].double(), v, atol=1e-6), k
    assert (out / "modules.json").is_file() and (out / "1_Pooling" / "config.json").is_file()
    st = SentenceTransformer(str(out), device="cpu")
    assert st.encode(["cats"]).shape == (1, 16)


# ------------------------------------------------------------------------------------------ bad inputs
def _fails(args: list[str], capsys, match: str) -> None:
    with pytest.raises(SystemExit) as e:
        main(["cocktail", *args])
    assert e.value.code != 0
    assert match in capsys.readouterr().err


def test_bad_inputs(dec, tmp_path, capsys):
    models, ex = dec
    m = list(map(str, models))
    out = tmp_path / "out"
    _fails(["--models", m[0], "--examples", str(ex), "--out", str(out)], capsys, "at least two models")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input": "a", "output": "b"}\n{"input": "a"\n')
    _fails(["--models", *m, "--examples", str(bad), "--out", str(out)], capsys, "bad.jsonl:2")
    miss = tmp_path / "miss.jsonl"
    miss.write_text('{"input": "a"}\n')
    _fails(["--models", *m, "--examples", str(miss), "--out", str(out)], capsys, "miss.jsonl:1")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    _fails(["--models", *m, "--examples", str(empty), "--out", str(out)], capsys, "no examples")
    _fails(["--models", *m, "--weights", "0.5", "0.5", "--out", str(out)], capsys, "2 weight(s) for 3 models")
    _fails(["--models", *m, "--weights", "0.5", "-0.1", "0.6", "--out", str(out)], capsys, "non-negative")
    other = save_llama(tmp_path / "wide", seed=0, init=0.02, hidden=32)
    _fails(["--models", m[0], str(other), "--weights", "0.5", "0.5", "--out", str(out)], capsys, "incompatible")
    vocab = save_llama(tmp_path / "vocab", seed=0, init=0.02, chars=CHARS[::-1])
    _fails(["--models", m[0], str(vocab), "--examples", str(ex), "--out", str(out)], capsys, "vocabularies")
    _fails(["--models", *m, "--out", str(out)], capsys, "either --examples")
    assert not out.exists()
    with pytest.raises(ModelmixError, match="needs at least 2 examples"):
        one = tmp_path / "one.jsonl"
        one.write_text(json.dumps(DEC_EXAMPLES[0]) + "\n")
        compute_weights(models, one, granularity="layer")
    out.mkdir()
    _fails(["--models", *m, "--weights", "1", "1", "1", "--out", str(out)], capsys, "already exists")


def test_separator_changes_the_scored_text(dec):
    """--separator '' scores input+output without LM-Cocktail's space (models trained on plain concatenation)."""
    from modelmix.eval import evaluate

    models, ex = dec
    plain = compute_weights(models, ex, separator="")
    spaced = compute_weights(models, ex)
    assert plain.losses != pytest.approx(spaced.losses, abs=1e-6)
    ref = [evaluate(str(m), DEC_EXAMPLES, "loss", separator="", batch_size=2)["loss"] for m in models]
    assert plain.losses == pytest.approx(ref, abs=1e-4)


def test_layer_search_groups_use_the_planners_layer_names():
    """One layer-name rule for the planner and the cocktail layer search (they used two regexes)."""
    from modelmix.planner import layer_index, layer_of
    from modelmix.weighting.cocktail import tensor_groups

    names = ["model.embed_tokens.weight", *(f"model.layers.{i}.mlp.w" for i in range(4)), "model.norm.weight",
             "lm_head.weight"]
    members, filters = tensor_groups(names, 2)
    assert members == {"embeddings": ["model.embed_tokens.weight"], "layers_0-1": names[1:3],
                       "layers_2-3": names[3:5], "head": ["model.norm.weight", "lm_head.weight"]}
    assert filters["layers_0-1"] == ["model.layers.0.", "model.layers.1."]
    for n in names:
        assert (layer_of(n) or (None, None))[1] == layer_index(n)
    assert layer_of("encoder.layer.11.output.dense.weight") == ("encoder.layer", 11)
