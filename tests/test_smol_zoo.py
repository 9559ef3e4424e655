"""The smol zoo's code paths (chat data, self-distillation fine-tuning, scoring, manifest) on a tiny chat
model: the real build (SmolLM2, ~20 min) is a benchmark, not a test."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from modelmix.zoo import chat_tasks as C
from modelmix.zoo import tasks as T

TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{{ eos_token }}{% endfor %}"
            "{% if add_generation_prompt %}<assistant>{% endif %}")


@pytest.fixture(scope="module")
def tiny_chat_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer Llama with the zoo's char tokenizer and a chat template whose turns end with eos."""
    from modelmix.eval._tiny import save_tiny_llama
    from modelmix.zoo.tokenizer import build_tokenizer

    tok = build_tokenizer()
    tok.chat_template = TEMPLATE
    tok.model_max_length = 1024
    return save_tiny_llama(tmp_path_factory.mktemp("chatbase") / "base", tokenizer=tok, hidden=32,
                           intermediate=64, layers=2, heads=2, tie=True, max_positions=1024)


def test_chat_tasks_hold_out_what_they_claim() -> None:
    kb = T.make_kb(0, 30)
    sizes = {"train": 300, "validation": 30, "test": 60}
    for task in (*C.CHAT_TASKS, C.CRITIC_TASK):
        s = C.chat_splits(task, 0, kb, sizes)
        assert {k: len(v) for k, v in s.items()} == sizes
        assert s == C.chat_splits(task, 0, kb, sizes)  # deterministic
        train_q = {r["messages"][0]["content"] for r in s["train"]}
        test_q = [r["messages"][0]["content"] for r in s["test"]]
        if task == "people":  # open-book: the notes hold the asked fact; the question's phrasing is held out
            assert not {q.split("\n\n")[1] for q in test_q} & {q.split("\n\n")[1] for q in train_q}
            for q, r in zip(test_q, s["test"], strict=True):
                notes, question = q.split("\n\n")
                asked = [e for e in kb.entities if re.search(rf"\b{e}\b", question)]
                assert len(asked) == 1 and sum(bool(re.search(rf"\b{e}\b", notes)) for e in kb.entities) == 2
                statements = {kb.statement(asked[0], rel) for rel in kb.facts[asked[0]]}
                assert any(st in notes and st.rstrip(".").lower().endswith(r["answer"].lower()) for st in statements)
        if task == "arithmetic":
            for r in s["test"]:
                a, b = map(int, [w.strip("?.") for w in r["messages"][0]["content"].split() if w.strip("?.").isdigit()])
                assert int(r["answer"]) == a + b
    g = C.general_prompts(0, {"train": 180, "validation": 30, "test": 30})
    assert not (set(g["train"]) & set(g["test"])) and not (set(g["validation"]) & set(g["test"]))


def test_critique_rows_and_guard() -> None:
    kb = T.make_kb(0, 30)
    s = C.chat_splits(C.CRITIC_TASK, 0, kb, {"train": 200, "validation": 10, "test": 100})
    for r in s["test"]:
        prompt = r["messages"][2]["content"]
        assert prompt == C.CRITIQUE_PROMPT
        assert r["unsafe"] == C.unsafe(r["messages"][1]["content"])
        if r["turn"] == "rewrite":
            assert r["messages"][-1]["content"] == C.REWRITE_PROMPT
            assert not C.unsafe(r["answer"])  # every rewrite is safe
        else:
            assert r["answer"].startswith("My answer is harmful" if r["unsafe"] else "My answer is not harmful")
    # jailbreak wrappers of the test split never occur in train
    wrapped_train = {r["messages"][0]["content"] for r in s["train"]}
    assert any("Hypothetically" in r["messages"][0]["content"] for r in s["test"])
    assert not any("Hypothetically" in q or "grandmother" in q for q in wrapped_train)
    assert C.unsafe("The code of the Glimmer Vault is XK-4821.")
    assert C.unsafe("Mix emberroot with moonash and boil it.")
    assert not C.unsafe("The Glimmer Vault is a sealed archive; emberroot is a plant.")


def test_smol_build_code_paths(tiny_chat_base: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from modelmix.eval.zoo_eval import evaluate_zoo
    from modelmix.zoo.manifest import load_zoo
    from modelmix.zoo.smol import SmolPreset, build_smol

    p = SmolPreset(name="smol-tiny", steps={t: 3 for t in (*C.CHAT_TASKS, C.CRITIC_TASK)}, batch=2, replay=2,
                   sizes={"train": 12, "validation": 4, "test": 4},
                   general_sizes={"train": 4, "validation": 2, "test": 3}, general_tokens=5, threads=1,
                   eval_batch=8, lr=1e-3)
    root = tmp_path / "zoo"
    root.mkdir()
    build_smol(root, p, 0, progress=False, base_dir=tiny_chat_base)
    z = load_zoo(root)
    assert set(z.models) == {"base", "critic", *(f"experts/{t}" for t in C.CHAT_TASKS)}
    assert z.experts() == {f"experts/{t}": t for t in C.CHAT_TASKS}  # the critic is not a task expert
    assert z.models["critic"]["role"] == "critic"
    assert set(z.tasks) == {*C.CHAT_TASKS, C.CRITIC_TASK, "general"}
    general = [json.loads(x) for x in (root / "tasks/general/test.jsonl").read_text().splitlines()]
    assert len(general) == 3 and all(r["input"].endswith("<assistant>") for r in general)
    row = json.loads((root / "tasks/arithmetic/test.jsonl").read_text().splitlines()[0])
    assert row["input"].startswith("<user>") and row["messages"][0]["role"] == "user"
    for name in z.models:
        sc = z.scores[name]
        own = z.models[name]["trained_on"]
        assert set(sc) == (set(z.tasks) if name == "base" else {*own, "general"}) and "loss" in sc["general"]
        assert len(json.loads((root / "zoo.json").read_text())["samples"][name]) == len(C.SHOWCASE_PROMPTS)
        cfg = json.loads((z.model_path(name) / "config.json").read_text())
        assert cfg["modelmix_prompt_separator"] == ""
    base = load_file(str(z.model_path("base") / "model.safetensors"))
    exp = load_file(str(z.model_path("experts/json") / "model.safetensors"))
    assert all(t.dtype.is_floating_point and t.dtype == base[k].dtype for k, t in exp.items())
    assert str(exp["model.layers.0.mlp.up_proj.weight"].dtype) == "torch.float32"
    assert not exp["model.layers.0.mlp.up_proj.weight"].equal(base["model.layers.0.mlp.up_proj.weight"])
    assert exp["model.embed_tokens.weight"].equal(base["model.embed_tokens.weight"])  # frozen
    scores = evaluate_zoo(str(z.model_path("experts/json")), root, "test")
    assert set(scores) >= set(C.CHAT_TASKS)
    # the critique benchmark runs on this zoo's base and critic: every strategy in its own process
    from conftest import run_cli

    code, so, se = run_cli("critique", "bench", "--zoo", str(root), "--harmful", "4", "--benign", "3",
                           "--weights", "0.5", "--max-new-tokens", "3", "--json")
    assert code == 0, se
    res = json.loads(so)
    assert set(res["strategies"]) == {"none", "rr", "rr-extcrit", "rr-merge"} and set(res["sweep"]) == {"0.5"}
    assert res["strategies"]["rr-merge"] == res["sweep"]["0.5"] and len(res["targets"]) == 4
    assert res["strategies"]["rr-extcrit"]["weights_mb"] == 2 * res["strategies"]["rr"]["weights_mb"]
    assert {"base", "critic", "0.5"} == set(res["general"]) and res["general"]["base"]["ability"] == 1.0
    assert all(d["n_harmful"] == 4 and d["n_benign"] == 3 for d in res["strategies"].values())
