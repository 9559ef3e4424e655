"""`make demo`: build the offline model zoo, merge its experts with three example recipes, measure everything.

Everything is local: the zoo (a small Llama base + one expert per task, trained here on CPU) is built once
and cached; each merge runs through the `modelmix merge` command exactly as a user would run it; each model
is then evaluated on every zoo task. Set MODELMIX_DEMO_PRESET=test for a faster, weaker zoo.
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
