"""`make demo`: build the offline model zoo, merge its experts, let the agent choose a merge, then route.

Everything is local: the zoo (a small Llama base + one expert per task, trained here on CPU) is built once
and cached; each merge runs through the `modelmix merge` command exactly as a user would run it; each model
is then evaluated on every zoo task. The merge agent then chooses candidates, method and weights itself on
the validation rows, and compares its best merge with routing. Then the alternative to merging: `modelmix serve` routes each query to
its expert over HTTP (the official openai client talks to it), feedback goes back, and `modelmix route stats`
shows what the learner now believes. Set MODELMIX_DEMO_PRESET=test for a faster, weaker zoo.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ["linear", "ties", "dare_ties"]


def main() -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    preset = os.environ.get("MODELMIX_DEMO_PRESET", "default")
    WORK = ROOT / "demo-out" / preset  # one work dir per preset: a zoo dir holds one build
    WORK.mkdir(parents=True, exist_ok=True)
    modelmix = [sys.executable, "-m", "modelmix.cli"]

    print(f"== 1. model zoo (preset {preset}; cached after the first build)", flush=True)
    t0 = time.perf_counter()
    subprocess.run([*modelmix, "zoo", "build", "--out", str(WORK / "zoo"), "--preset", preset], check=True)
    print(f"   zoo ready in {time.perf_counter() - t0:.0f}s: {WORK / 'zoo'}\n", flush=True)

    print(f"== 2. merges (cwd {WORK.relative_to(ROOT)}/, so the recipes' ./zoo/... paths resolve)", flush=True)
    for r in RECIPES:
        cmd = [*modelmix, "merge", str(ROOT / "examples" / f"{r}.yml"), f"merged-{r}", "--overwrite"]
        print("   $ modelmix " + " ".join(cmd[3:]), flush=True)
        subprocess.run(cmd, check=True, cwd=WORK)
    print()

    print("== 3. evaluation on every zoo task (exact match %, general = loss on held-out general text)", flush=True)
    from transformers.utils import logging as hf_logging

    from modelmix.eval import evaluate_zoo
    from modelmix.zoo.manifest import load_zoo

    hf_logging.disable_progress_bar()

    zoo = load_zoo(WORK / "zoo")
    decoder_tasks = [t for t, spec in zoo.tasks.items() if spec["type"] == "decoder" and t != "general"]
    rows: list[tuple[str, Path]] = [("base", WORK / "zoo" / "base")]
    rows += [(f"expert:{t}", WORK / "zoo" / "experts" / t) for t in ("addition", "reverse", "upper")]
    rows += [(f"merge:{r}", WORK / f"merged-{r}") for r in RECIPES]
    header = ["model", *decoder_tasks, "mean", "general"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name, path in rows:
        t = time.perf_counter()
        scores = evaluate_zoo(str(path), WORK / "zoo", tasks=[*decoder_tasks, "general"], separator="")
        ems = [100 * scores[task]["exact_match"] for task in decoder_tasks]
        cells = [f"{v:.0f}" for v in ems] + [f"{sum(ems) / len(ems):.1f}", f"{scores['general']['loss']:.3f}"]
        print(f"| {name} | " + " | ".join(cells) + f" |   ({time.perf_counter() - t:.1f}s)", flush=True)
    print("\nEach merge combines the addition, reverse and upper experts (examples/*.yml). Numbers are measured,")
    print("not curated: docs/zoo_report.md compares every method (`modelmix zoo report --zoo demo-out/default/zoo`).")
    print()
    agent(zoo, WORK, modelmix)
    return route(zoo, WORK, modelmix)


def agent(zoo, work: Path, modelmix: list[str]) -> None:  # noqa: ANN001
    """4. The merge agent chooses the merge itself, on the validation rows, and says whether to route instead."""
    experts = {task: m for m, task in zoo.experts().items()}
    tasks = [t for t in zoo.decoder_tasks() if t in experts]
    print("== 4. the merge agent: which experts, which method, which weights (budget 20 trials)", flush=True)
    cmd = [*modelmix, "agent", "run", "--base", "zoo/base", "--general", "zoo/tasks/general/validation.jsonl",
           "--budget", "20", "--db", "agent.db", "--out", "merged-agent", "--overwrite"]
    for t in tasks:
        cmd += ["--models", f"zoo/{experts[t]}", "--tasks", f"{t}=zoo/tasks/{t}/validation.jsonl"]
    print("   $ modelmix " + " ".join(cmd[3:]), flush=True)
    subprocess.run(cmd, check=True, cwd=work)
    print(f"   report: {work.relative_to(ROOT)}/merged-agent/agent_report.html (rerun: resumes from agent.db)\n",
          flush=True)


def route(zoo, work: Path, modelmix: list[str]) -> int:  # noqa: ANN001 - the demo's second half
    """4. Routing instead of merging: serve the experts behind one endpoint, ask, give feedback."""
    import json
    import socket

    import yaml
    from openai import OpenAI

    from modelmix.eval.data import coerce_examples

    print("== 5. routing instead of merging: `modelmix serve` over the five experts", flush=True)
    experts = {task: m for m, task in zoo.experts().items()}
    cfg = {"models": {t: {"path": str(zoo.model_path(m)), "max_new_tokens": 24} for t, m in experts.items()},
           "routes": [{"name": t, "models": [t], "utterances": [r["input"] for r in
                       coerce_examples(zoo.split_path(t, "validation"), "decoder")[:10]]} for t in experts],
           "feedback": {"store": "router.db"}}
    (work / "router.yml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([*modelmix, "serve", "router.yml", "--port", str(port)], cwd=work)
    try:
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
        deadline = time.time() + 120
        while True:
            try:
                client.models.list()
                break
            except Exception:  # noqa: BLE001 - not up yet
                if time.time() > deadline or server.poll() is not None:
                    print("   the server did not start", file=sys.stderr)
                    return 1
                time.sleep(0.5)
        tests = [(t, coerce_examples(zoo.split_path(t, "test"), "decoder")[0]) for t in experts]
        print(f"   {'query':<34} {'route (confidence)':<24} {'answer':<16} right?")
        for _task, ex in tests:
            r = client.chat.completions.create(model="router", messages=[{"role": "user", "content": ex["input"]}])
            meta = r.model_extra["modelmix"]
            top = next(iter(meta["distribution"]))
            ans = r.choices[0].message.content.strip()
            ok = ans == ex["output"].strip()
            print(f"   {ex['input'][:34]:<34} {top + ' (%.0f%%)' % (100 * meta['distribution'][top]):<24} "
                  f"{ans[:16]:<16} {'yes' if ok else 'no'}", flush=True)
            client.post("/feedback", body={"id": r.id, "score": 1.0 if ok else 0.0}, cast_to=object)
    finally:
        server.terminate()
        server.wait(30)
    out = subprocess.run([*modelmix, "route", "stats", "router.yml", "--json"], cwd=work, check=True,
                         capture_output=True, text=True).stdout
    st = json.loads(out)
    print(f"\n   feedback stored: {st['feedback_events']} events in {work / 'router.db'}; the learner's belief per "
          "route (posterior mean of its expert):")
    for t in experts:
        print(f"   {t:<10} {st['routes'][t]['learner'][t]['mean']:.2f}")
    print("   `modelmix route export router.yml --out feedback.jsonl` turns the feedback into cocktail examples.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
