"""Model zoo: one test-preset build per session (cached under a tmp MODELMIX_CACHE), then checks on it."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from modelmix.errors import ConfigError, InputError, OutputError
from modelmix.zoo import build_zoo, cached_zoo_path, load_zoo
from modelmix.zoo.tasks import DECODER_TASKS, PROMPT_MARKER, RETRIEVAL_TASKS

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def test_manifest_complete(zoo_dir: Path) -> None:
    z = load_zoo(zoo_dir)
    assert (z.preset, z.seed) == ("test", 0)
    raw = json.loads((zoo_dir / "zoo.json").read_text())
    assert raw["format"] == 1 and set(raw) >= {"format", "preset", "seed", "recipe_version", "tasks", "models", "scores"}
    assert set(z.tasks) == {*DECODER_TASKS, "general", *RETRIEVAL_TASKS, "retrieval-general"}
    assert len(DECODER_TASKS) >= 5 and len(RETRIEVAL_TASKS) >= 2
    for t in DECODER_TASKS:
        assert z.tasks[t]["type"] == "decoder" and z.tasks[t]["metric"] == "exact_match"
    assert z.tasks["general"]["metric"] == "loss"
    assert all(z.tasks[t]["metric"] == "retrieval" for t in [*RETRIEVAL_TASKS, "retrieval-general"])
    expected = {"base", *(f"experts/{t}" for t in DECODER_TASKS), "embedders/base",
                *(f"embedders/{t}" for t in RETRIEVAL_TASKS)}
    assert set(z.models) == expected
    assert z.experts() == {f"experts/{t}": t for t in DECODER_TASKS}
    assert z.experts("encoder") == {f"embedders/{t}": t for t in RETRIEVAL_TASKS}
    for name, spec in z.models.items():
        assert z.model_path(name).is_dir()
        assert (z.model_path(name) / "config.json").is_file()
        if spec["type"] == "decoder":
            assert spec["params"] > 0 and spec["train_steps"] > 0
    for name, spec in z.models.items():  # every model scored on every task of its kind
        kind_tasks = z.decoder_tasks() if spec["type"] == "decoder" else z.encoder_tasks()
        assert set(z.scores[name]) == set(kind_tasks)
    for t, spec in z.tasks.items():
        for split, n in spec["sizes"].items():
            assert sum(1 for _ in open(z.split_path(t, split))) == n
    assert not (zoo_dir / "tasks" / "general" / "train.jsonl").exists()
    assert (zoo_dir / "tasks" / "retrieval-general" / "test.jsonl").is_file()


def test_jsonl_well_formed(zoo_dir: Path) -> None:
    z = load_zoo(zoo_dir)
    for t, spec in z.tasks.items():
        for split in spec["sizes"]:
            lines = z.split_path(t, split).read_text(encoding="utf-8").splitlines()
            assert lines
            for line in lines:
                row = json.loads(line)
                if spec["type"] == "decoder":
                    assert set(row) == {"input", "output"}
                    assert isinstance(row["input"], str) and isinstance(row["output"], str) and row["output"]
                    assert "\n" not in row["output"] and "\n" not in row["input"]
                    if t != "general":
                        assert row["input"].endswith(PROMPT_MARKER)
                else:
                    assert set(row) == {"query", "pos", "neg"}
                    assert isinstance(row["query"], str) and len(row["pos"]) == 1 and len(row["neg"]) >= 2
                    assert row["pos"][0] not in row["neg"]


def test_experts_beat_base(zoo_dir: Path) -> None:
    s = load_zoo(zoo_dir).scores
    gains = []
    for t in DECODER_TASKS:
        base, exp = s["base"][t], s[f"experts/{t}"][t]
        assert exp["exact_match"] > base["exact_match"], (t, base, exp)
        assert exp["loss"] < base["loss"], (t, base, exp)
        gains.append(exp["exact_match"] - base["exact_match"])
    # recipe 4's test-preset target, on average: one minute of training amplifies the float rounding of the
    # CPU's kernels (AVX2 vs AVX-512, MKL's code paths), so single tasks move (addition +.30 on one machine,
    # +.075 on another; docs/zoo_experiments.md) while the zoo as a whole keeps its shape
    assert sum(gains) / len(gains) >= 0.2, gains
    # experts stay near the base (general-text replay while fine-tuning): general ability is mostly kept
    assert all(s[f"experts/{t}"]["general"]["loss"] < 3 * s["base"]["general"]["loss"] for t in DECODER_TASKS)


def test_decoders_load_with_transformers(zoo_dir: Path) -> None:
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from modelmix.zoo.evaluate import exact_match, greedy_generate
    from modelmix.zoo.tasks import read_jsonl

    z = load_zoo(zoo_dir)
    tok = AutoTokenizer.from_pretrained(z.model_path("base"))
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (1, 2, 0)
    assert tok.decode(tok("add 12+3 =")["input_ids"], skip_special_tokens=True) == "add 12+3 ="
    for name in ("base", "experts/upper"):
        path = z.model_path(name)
        assert (path / "model.safetensors").is_file()
        with safe_open(str(path / "model.safetensors"), "pt") as f:
            assert "lm_head.weight" in f.keys()
        model = AutoModelForCausalLM.from_pretrained(path)
        assert type(model).__name__ == "LlamaForCausalLM"
        out = greedy_generate(model, tok, ["upper abc =", "reverse abcd ="], max_new_tokens=6)
        assert len(out) == 2 and all(isinstance(o, str) and "\n" not in o for o in out)
    # manifest scores are reproducible from the saved files
    model = AutoModelForCausalLM.from_pretrained(z.model_path("experts/reverse"))
    test = read_jsonl(z.split_path("reverse", "test"))
    assert exact_match(model, tok, test) == pytest.approx(z.scores["experts/reverse"]["reverse"]["exact_match"])


def test_embedders_load(zoo_dir: Path) -> None:
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel

    z = load_zoo(zoo_dir)
    for name in ["embedders/base", *(f"embedders/{t}" for t in RETRIEVAL_TASKS)]:
        m = SentenceTransformer(str(z.model_path(name)), device="cpu")
        assert m.encode(["hello world"]).shape == (1, 384)
    assert (z.model_path("embedders/retrieval-facts") / "model.safetensors").is_file()
    assert type(AutoModel.from_pretrained(z.model_path("embedders/retrieval-facts"))).__name__ == "BertModel"


def test_deterministic(zoo_dir: Path) -> None:
    """Same seed -> identical data files and bit-identical base weights (re-running the base training)."""
    import torch
    from safetensors.torch import load_file

    from modelmix.zoo.build import make_data, train_base, write_data
    from modelmix.zoo.tokenizer import build_tokenizer
    from modelmix.zoo.train import PRESETS

    p = PRESETS["test"]
    kb, data = make_data(p, 0)
    tmp = zoo_dir.parent / "regen"
    write_data(tmp, data)
    for f in sorted((zoo_dir / "tasks").rglob("*.jsonl")):
        assert (tmp / f.relative_to(zoo_dir)).read_bytes() == f.read_bytes(), f
    tok = build_tokenizer()
    base = train_base(p, 0, kb, data, tok)
    saved = load_file(str(zoo_dir / "base" / "model.safetensors"))
    state = base.state_dict()
    assert set(saved) == set(state)
    for k, v in saved.items():
        assert torch.equal(v, state[k]), k
    assert make_data(p, 1)[1]["addition"]["train"] != data["addition"]["train"]


def test_cache_reuse_and_errors(zoo_dir: Path, cache_env: Path, tmp_path: Path) -> None:
    assert (cached_zoo_path("test", 0) / "zoo.json").is_file()
    t = time.perf_counter()
    out = build_zoo(tmp_path / "again", preset="test", seed=0, progress=False)
    assert time.perf_counter() - t < 10
    assert (out / "experts" / "addition" / "model.safetensors").read_bytes() == \
        (zoo_dir / "experts" / "addition" / "model.safetensors").read_bytes()
    assert build_zoo(out, preset="test", seed=0, progress=False) == out  # already there: no-op
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "x.txt").write_text("x")
    with pytest.raises(OutputError):
        build_zoo(junk, preset="test", seed=0, progress=False)
    with pytest.raises(ConfigError, match="tset|test"):
        build_zoo(tmp_path / "bad", preset="tset")
    with pytest.raises(InputError):
        load_zoo(tmp_path)


def test_cli(zoo_dir: Path, cache_env: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    from modelmix.zoo.cli import zoo

    r = CliRunner().invoke(zoo, ["build", "--out", str(tmp_path / "cli"), "--preset", "test", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "experts/addition" in r.output and (tmp_path / "cli" / "zoo.json").is_file()
    r = CliRunner().invoke(zoo, ["build", "--out", str(tmp_path / "x"), "--preset", "huge"])
    assert r.exit_code != 0
    code = "import sys, modelmix.zoo.cli; assert 'transformers' not in sys.modules and 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_pretraining_forms_are_fixed_per_prompt() -> None:
    """Recipe 3's unreliable base: a fixed pseudo-random share of prompts is answered in the chatty form."""
    from modelmix.zoo.tasks import CHATTY, make_kb, pretraining_row, task_splits

    rows = task_splits("reverse", 0, make_kb(0, 8), {"add_digits": 2, "max_len": 6}, {"train": 400, "validation": 10,
                                                                                       "test": 10})["train"]
    forms = [pretraining_row(r, 0.5) for r in rows]
    assert forms == [pretraining_row(r, 0.5) for r in rows]  # the same prompt always gets the same form
    chatty = [f for f, r in zip(forms, rows, strict=True) if f["output"] != r["output"]]
    assert all(f["output"] == CHATTY.format(a=r["output"]) for f, r in zip(forms, rows, strict=True) if f in chatty)
    assert 0.4 < len(chatty) / len(rows) < 0.6
    assert all(pretraining_row(r, 1.0) == {"input": r["input"], "output": r["output"]} for r in rows)


def test_general_text_sentence_cap() -> None:
    """`general_sentences` 1 (the test preset) gives one-sentence lines; the default keeps some two-sentence ones."""
    import random

    from modelmix.zoo.tasks import general_text, make_kb

    kb = make_kb(0, 8)
    two = [general_text(random.Random(i), kb) for i in range(200)]
    one = [general_text(random.Random(i), kb, 1) for i in range(200)]
    assert all(line.count(".") == 1 for line in one)
    assert any(line.count(".") == 2 for line in two)
    assert all(a.startswith(b) for a, b in zip(two, one, strict=True))  # the same first sentence, the rest dropped


def test_fine_tunes_identical_whatever_the_workers(zoo_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    """The session's zoo ran its fine-tunes in `build_workers()` processes; the same job run in this process
    (what MODELMIX_ZOO_WORKERS=1 does) saves bit-identical weights and the same scores."""
    import shutil

    import torch
    from safetensors.torch import load_file

    from modelmix.zoo.build import _job, build_workers
    from modelmix.zoo.train import PRESETS

    root = tmp_path / "z"
    shutil.copytree(zoo_dir / "base", root / "base")
    shutil.copytree(zoo_dir / "embedders" / "base", root / "embedders" / "base")
    manifest = json.loads((zoo_dir / "zoo.json").read_text())
    for kind, task, name in [("expert", "upper", "experts/upper"), ("embedder", "retrieval-facts",
                                                                     "embedders/retrieval-facts")]:
        got_name, spec, scores = _job(str(root), PRESETS["test"], 0, kind, task)
        assert got_name == name and scores == manifest["scores"][name]
        got, want = load_file(str(root / name / "model.safetensors")), load_file(str(zoo_dir / name / "model.safetensors"))
        assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want), name
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv("MODELMIX_ZOO_WORKERS", bad)
        with pytest.raises(ConfigError, match="MODELMIX_ZOO_WORKERS"):
            build_workers()
    monkeypatch.setenv("MODELMIX_ZOO_WORKERS", "²")  # a digit to str.isdigit, not a number
    with pytest.raises(ConfigError, match="MODELMIX_ZOO_WORKERS"):
        build_workers()
    monkeypatch.setenv("MODELMIX_ZOO_WORKERS", "1")
    assert build_workers() == 1
    monkeypatch.setenv("MODELMIX_ZOO_WORKERS", "zero")  # checked before any training, and nothing is left behind
    monkeypatch.setenv("MODELMIX_CACHE", str(tmp_path / "cache"))
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match="MODELMIX_ZOO_WORKERS"):
        build_zoo(tmp_path / "out", preset="test", seed=0, progress=False)
    assert time.perf_counter() - t0 < 10 and not (tmp_path / "out").exists()
    assert not any((tmp_path / "cache" / "zoo").iterdir())


def test_ctrl_c_during_parallel_fine_tunes_leaves_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Ctrl-C while the fine-tunes run in worker processes: the build stops at once, every worker is gone,
    and neither the cache nor --out holds a partial zoo."""
    import _thread
    import dataclasses
    import multiprocessing
    import threading

    from modelmix.zoo import build as B

    slow = dataclasses.replace(B.PRESETS["test"], base_steps=5, base_sft_steps=5, expert_steps=2000)
    monkeypatch.setitem(B.PRESETS, "test", slow)
    monkeypatch.setenv("MODELMIX_ZOO_WORKERS", "2")
    monkeypatch.setenv("MODELMIX_CACHE", str(tmp_path / "cache"))
    zoo_cache = tmp_path / "cache" / "zoo"

    def interrupt_once_training() -> None:
        deadline = time.time() + 120
        while time.time() < deadline and len(multiprocessing.active_children()) < 2:
            time.sleep(0.1)
        time.sleep(4)  # both workers are inside their (2000-step) jobs
        _thread.interrupt_main()

    threading.Thread(target=interrupt_once_training, daemon=True).start()
    t0 = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        B.build_zoo(tmp_path / "out", preset="test", seed=0, progress=False)
    assert time.perf_counter() - t0 < 100  # 2000-step experts would take minutes
    assert multiprocessing.active_children() == []
    assert not (tmp_path / "out").exists() and list(zoo_cache.iterdir()) == []
