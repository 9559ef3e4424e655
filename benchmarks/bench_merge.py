#!/usr/bin/env python3
"""Side-by-side merge benchmark: mergekit 0.1.5 vs modelmix on synthetic Llama checkpoints.

For every recipe in ``benchmarks/recipes`` (linear, slerp, ties, dare_ties) this runs

  (a) ``.bench-venv/bin/mergekit-yaml RECIPE OUT --quiet``            (mergekit 0.1.5, CPU, defaults)
  (b) ``.venv/bin/modelmix merge RECIPE OUT --overwrite --quiet``     (modelmix)

each in a fresh child process, and records wall time and peak RSS (``ru_maxrss`` from ``os.wait4``
of that child). Before every timed run the recipe's input shards are read once so both tools start
from the same warm page cache; after every run the output is checked, deleted and ``sync``-ed
outside the timed region. Correctness: a fixed set of output tensors (the embedding plus N seeded
random tensors) of mergekit's output is stored as a reference and modelmix's output is compared
against it (max abs diff, relative L2 error, and error relative to the merge's task vector).

Prints a Markdown table and optionally writes JSON (``--json``). ``--mergekit-cache`` reuses stored
mergekit numbers (``benchmarks/results/mergekit-<size>.json``) plus the stored reference tensors
instead of re-running mergekit; ``--save-mergekit-cache`` writes them.

Examples::

  .venv/bin/python benchmarks/bench_merge.py --size tiny
  .venv/bin/python benchmarks/bench_merge.py --size 1.1b --json bench-out/1.1b.json
  .venv/bin/python benchmarks/bench_merge.py --size 1.1b --skip-modelmix --save-mergekit-cache
  .venv/bin/python benchmarks/bench_merge.py --size 1.1b --mergekit-cache
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import random
import shutil
import statistics
import string
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RECIPE_DIR = HERE / "recipes"
RESULTS_DIR = HERE / "results"
DEFAULT_RECIPES = ("linear", "slerp", "ties", "dare_ties")
STOCHASTIC = {"dare_ties", "dare_linear", "della", "della_linear"}
TOOLS = ("mergekit", "modelmix")
MERGEKIT_VERSION = "0.1.5"
GB = 1e9

CHILD_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "CUDA_VISIBLE_DEVICES": "",
    "TOKENIZERS_PARALLELISM": "false",
}


# --------------------------------------------------------------------------------------------- utils
def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def machine_info() -> dict[str, Any]:
    mem_gb = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem_gb = round(int(line.split()[1]) * 1024 / GB, 1)
                    break
    except OSError:
        pass
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "mem_total_gb": mem_gb,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "loadavg_1m_at_start": loadavg(),
    }


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


# ------------------------------------------------------------------------------------ checkpoints
def ensure_checkpoints(ckpt: Path, size: str) -> None:
    cmd = [sys.executable, str(HERE / "make_checkpoints.py"), "--out", str(ckpt), "--size", size]
    subprocess.run(cmd, check=True)


def materialize_recipe(name: str, ckpt: Path, dest_dir: Path) -> Path:
    src = RECIPE_DIR / f"{name}.yml"
    if not src.exists():
        raise SystemExit(f"unknown recipe {name!r}: {src} not found")
    text = string.Template(src.read_text()).safe_substitute(CKPT=str(ckpt))
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / f"{name}.yml"
    dest.write_text(text)
    return dest


def recipe_models(recipe: Path) -> list[Path]:
    """Model directories referenced by a materialized recipe (cheap scan, no YAML dependency)."""
    out: list[Path] = []
    for line in recipe.read_text().splitlines():
        s = line.split("#", 1)[0].strip().lstrip("- ").strip()
        for key in ("model:", "base_model:"):
            if s.startswith(key):
                p = Path(s[len(key) :].strip().strip("'\""))
                if p.is_dir() and p not in out:
                    out.append(p)
    return out


def warm_page_cache(models: list[Path]) -> float:
    """Read every input shard once so the timed run sees a warm page cache. Returns seconds."""
    t0 = time.perf_counter()
    buf = bytearray(16 << 20)
    for m in models:
        for f in sorted(m.glob("*.safetensors")):
            with open(f, "rb", buffering=0) as fh:
                while fh.readinto(buf):
                    pass
    return time.perf_counter() - t0


# ------------------------------------------------------------------------------------------ runner
def tool_command(tool: str, recipe: Path, out: Path, threads: int | None) -> list[str]:
    if tool == "mergekit":
        cmd = [str(ROOT / ".bench-venv" / "bin" / "mergekit-yaml"), str(recipe), str(out), "--quiet"]
        if threads:
            cmd += ["--num-threads", str(threads)]
    else:
        cmd = [
            str(ROOT / ".venv" / "bin" / "modelmix"),
            "merge",
            str(recipe),
            str(out),
            "--overwrite",
            "--quiet",
        ]
        if threads:
            cmd += ["--threads", str(threads)]
    return cmd


# Linux carries a process's peak RSS across fork+exec: a child forked from this (by then large) benchmark
# process reports at least our own RSS as its ru_maxrss. So every measured tool is started by a small
# launcher process, and the peak reported is the launcher's RUSAGE_CHILDREN: the tool alone.
_LAUNCHER = (
    "import resource, subprocess, sys\n"
    "rc = subprocess.run(sys.argv[2:]).returncode\n"
    "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))\n"
    "sys.exit(rc)\n"
)


def run_timed(cmd: list[str], logfile: Path, timeout: float) -> dict[str, Any]:
    """Run one child; wall time, CPU time and the peak RSS of exactly that tool (see _LAUNCHER)."""
    env = {**os.environ, **CHILD_ENV}
    la = loadavg()
    peak_file = logfile.with_suffix(".maxrss")
    peak_file.unlink(missing_ok=True)
    cmd = [sys.executable, "-c", _LAUNCHER, str(peak_file), *cmd]
    with open(logfile, "wb") as lf:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=lf, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT))
        deadline = t0 + timeout
        status, ru = 0, None
        timed_out = False
        while True:
            pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
            if pid == proc.pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                timed_out = True
                _, status, ru = os.wait4(proc.pid, 0)
                break
            time.sleep(0.02)
        wall = time.perf_counter() - t0
    rc = os.waitstatus_to_exitcode(status)
    proc.returncode = rc  # already reaped via wait4; keep Popen consistent
    res: dict[str, Any] = {
        "rc": rc,
        "wall_s": round(wall, 2),
        "peak_rss_gb": round(int(peak_file.read_text()) * 1024 / GB, 3) if peak_file.is_file() else None,
        "user_s": round(ru.ru_utime, 2) if ru is not None else None,
        "sys_s": round(ru.ru_stime, 2) if ru is not None else None,
        "loadavg_1m_before": la,
    }
    if timed_out:
        res["error"] = f"timed out after {timeout:.0f}s"
    elif rc != 0:
        tail = logfile.read_text(errors="replace")[-2000:]
        res["error"] = f"exit code {rc}; log tail:\n{tail}"
    return res


# ------------------------------------------------------------------------------------- correctness
def tensor_files(model_dir: Path) -> dict[str, Path]:
    from safetensors import safe_open

    idx = model_dir / "model.safetensors.index.json"
    if idx.exists():
        wm = json.loads(idx.read_text())["weight_map"]
        return {k: model_dir / v for k, v in wm.items()}
    out: dict[str, Path] = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(f), "pt") as fh:
            for k in fh.keys():
                out[k] = f
    return out


def load_tensors(model_dir: Path, names: list[str]) -> dict[str, Any]:
    from safetensors import safe_open

    files = tensor_files(model_dir)
    out: dict[str, Any] = {}
    for n in names:
        if n not in files:
            continue
        with safe_open(str(files[n]), "pt") as fh:
            out[n] = fh.get_tensor(n)
    return out


def compare_names(ckpt: Path, n: int | str) -> list[str]:
    names = sorted(tensor_files(ckpt / "base"))
    if n == "all":
        return names
    first = "model.embed_tokens.weight"
    rest = [x for x in names if x != first]
    picked = random.Random(12345).sample(rest, min(int(n), len(rest)))
    return [first, *sorted(picked)]


def ref_path(size_dir: Path, recipe: str) -> Path:
    return size_dir / "mergekit-ref" / f"{recipe}.safetensors"


def save_reference(out_dir: Path, names: list[str], dest: Path) -> None:
    from safetensors.torch import save_file

    ts = load_tensors(out_dir, names)
    dest.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in ts.items()}, str(dest))


def compare_outputs(ref_file: Path, out_dir: Path, base_dir: Path) -> dict[str, Any]:
    from safetensors import safe_open

    with safe_open(str(ref_file), "pt") as fh:
        names = list(fh.keys())
        refs = {k: fh.get_tensor(k) for k in names}
    got = load_tensors(out_dir, names)
    base = load_tensors(base_dir, names)
    per: dict[str, Any] = {}
    for k in names:
        if k not in got:
            per[k] = {"error": "missing in modelmix output"}
            continue
        a, b = refs[k].float(), got[k].float()
        if a.shape != b.shape:
            per[k] = {"error": f"shape {tuple(b.shape)} != mergekit {tuple(a.shape)}"}
            continue
        d = (a - b).abs()
        tv = (a - base[k].float()).norm().item() if k in base else float("nan")
        dn = d.norm().item()
        per[k] = {
            "dtype": f"{str(got[k].dtype).replace('torch.', '')} (mergekit {str(refs[k].dtype).replace('torch.', '')})",
            "max_abs_diff": float(d.max()),
            "rel_l2": dn / max(a.norm().item(), 1e-30),
            "rel_to_task_vector": dn / tv if tv > 0 else None,
            "frac_bit_equal": float((refs[k] == got[k].to(refs[k].dtype)).float().mean()),
        }
        del a, b, d
    ok = [v for v in per.values() if "error" not in v]
    summary: dict[str, Any] = {
        "tensors": len(names),
        "errors": [f"{k}: {v['error']}" for k, v in per.items() if "error" in v],
        "max_abs_diff": max((v["max_abs_diff"] for v in ok), default=None),
        "max_rel_l2": max((v["rel_l2"] for v in ok), default=None),
        "max_rel_to_task_vector": max(
            (v["rel_to_task_vector"] for v in ok if v["rel_to_task_vector"] is not None), default=None
        ),
        "per_tensor": per,
    }
    return summary


# -------------------------------------------------------------------------------------------- main
def cache_path(size: str, arg: str | None) -> Path:
    return Path(arg) if arg else RESULTS_DIR / f"mergekit-{size}.json"


def fmt(x: float | None, nd: int = 1) -> str:
    return "—" if x is None else f"{x:.{nd}f}"


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    good = [r for r in runs if r.get("rc") == 0 and "error" not in r]
    if not good:
        return {"ok": False, "error": runs[-1].get("error") if runs else "not run"}
    return {
        "ok": True,
        "wall_s": round(median([r["wall_s"] for r in good]), 2),
        "peak_rss_gb": round(median([r["peak_rss_gb"] for r in good]), 3),
        "cpu_s": round(median([(r.get("user_s") or 0.0) + (r.get("sys_s") or 0.0) for r in good]), 2),
        "n": len(good),
    }


def table(size: str, results: dict[str, Any]) -> str:
    hdr = (
        "| recipe | mergekit s | mergekit peak GB | modelmix s | modelmix peak GB | speedup × | memory ratio × "
        "| max abs diff | rel L2 | mergekit CPU s | modelmix CPU s |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    rows = [f"Merge benchmark, size {size} (median of runs; peak = max RSS of the child process)", "", hdr]
    for name, r in results.items():
        mk, mm = r.get("mergekit", {}).get("summary", {}), r.get("modelmix", {}).get("summary", {})
        mks, mkg = (mk.get("wall_s"), mk.get("peak_rss_gb")) if mk.get("ok") else (None, None)
        mms, mmg = (mm.get("wall_s"), mm.get("peak_rss_gb")) if mm.get("ok") else (None, None)
        speed = mks / mms if mks and mms else None
        memr = mkg / mmg if mkg and mmg else None
        cmp_ = r.get("compare") or {}
        mad = f"{cmp_['max_abs_diff']:.2e}" if cmp_.get("max_abs_diff") is not None else "—"
        rl2 = f"{cmp_['max_rel_l2']:.2e}" if cmp_.get("max_rel_l2") is not None else "—"
        if name in STOCHASTIC and cmp_:
            rl2 += " (stochastic)"
        if cmp_.get("errors"):
            rl2 += " ERR"
        mk_cell = "FAILED" if r.get("mergekit") and not mk.get("ok") else fmt(mks)
        mm_cell = "FAILED" if r.get("modelmix") and not mm.get("ok") else fmt(mms)
        rows.append(
            f"| {name} | {mk_cell} | {fmt(mkg, 2)} | {mm_cell} | {fmt(mmg, 2)} | {fmt(speed, 2)} | "
            f"{fmt(memr, 2)} | {mad} | {rl2} | {fmt(mk.get('cpu_s'))} | {fmt(mm.get('cpu_s'))} |"
        )
    return "\n".join(rows)


def save_results(a: argparse.Namespace, report: dict[str, Any], run_mk: bool, quiet: bool) -> None:
    """Write --save-mergekit-cache / --json outputs (called after every recipe, so partial runs keep data)."""
    if a.save_mergekit_cache is not None and run_mk:
        cp = cache_path(a.size, a.save_mergekit_cache or None)
        prev: dict[str, Any] = json.loads(cp.read_text()) if cp.exists() else {}
        mk = {
            "tool": "mergekit",
            "version": MERGEKIT_VERSION,
            "size": a.size,
            "date": report["date"],
            "machine": report["machine"],
            "settings": {k: v for k, v in report["settings"].items() if k != "mergekit_cached_from"},
            "recipes": {**prev.get("recipes", {})},
        }
        for r, e in report["recipes"].items():
            if "mergekit" in e and not e["mergekit"].get("cached"):
                mk["recipes"][r] = e["mergekit"]
        cp.parent.mkdir(parents=True, exist_ok=True)
        cp.write_text(json.dumps(mk, indent=2) + "\n")
        if not quiet:
            log(f"saved mergekit results to {cp}")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(report, indent=2) + "\n")
        if not quiet:
            log(f"wrote {a.json}")


def ensure_peers() -> None:
    if not (ROOT / ".bench-venv" / "bin" / "mergekit-yaml").exists():
        log("peer venv missing: running benchmarks/setup_peers.sh")
        subprocess.run(["bash", str(HERE / "setup_peers.sh")], check=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1.1b", choices=["1.1b", "0.3b", "tiny"])
    ap.add_argument("--recipes", default=",".join(DEFAULT_RECIPES), help="comma-separated recipe names")
    ap.add_argument(
        "--work", type=Path, default=ROOT / "bench-out", help="checkpoints/outputs (default bench-out/)"
    )
    ap.add_argument(
        "--repeat", type=int, default=1, help="timed runs per tool and recipe (table shows median)"
    )
    ap.add_argument(
        "--repeat-modelmix", type=int, default=None,
        help="timed modelmix runs per recipe (default --repeat); cheap, so a median of 3 damps the noise of a shared machine",
    )
    ap.add_argument(
        "--threads", type=int, default=None, help="pass -j/--num-threads N and --threads N to the tools"
    )
    ap.add_argument("--skip-mergekit", action="store_true", help="do not run mergekit (no correctness check)")
    ap.add_argument("--skip-modelmix", action="store_true", help="do not run modelmix")
    ap.add_argument(
        "--mergekit-cache",
        nargs="?",
        const="",
        default=None,
        metavar="JSON",
        help="reuse stored mergekit numbers (default benchmarks/results/mergekit-<size>.json) and reference tensors",
    )
    ap.add_argument(
        "--save-mergekit-cache",
        nargs="?",
        const="",
        default=None,
        metavar="JSON",
        help="write measured mergekit numbers (default benchmarks/results/mergekit-<size>.json)",
    )
    ap.add_argument(
        "--compare", default="3", help="random tensors to compare besides the embedding, or 'all'"
    )
    ap.add_argument("--no-warm", action="store_true", help="do not pre-read inputs before each timed run")
    ap.add_argument(
        "--keep-outputs", action="store_true", help="keep merged outputs (default: delete after each run)"
    )
    ap.add_argument("--timeout", type=float, default=3600.0, help="per-run timeout in seconds")
    ap.add_argument("--json", type=Path, default=None, help="write full results as JSON here")
    a = ap.parse_args(argv)

    recipes = [r.strip() for r in a.recipes.split(",") if r.strip()]
    work = a.work.resolve()
    size_dir = work / a.size
    ckpt = size_dir  # base/, ft1/, ft2/
    ensure_checkpoints(ckpt, a.size)
    recipe_dir = size_dir / "recipes"
    logs = size_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)

    cached: dict[str, Any] | None = None
    if a.mergekit_cache is not None:
        cp = cache_path(a.size, a.mergekit_cache or None)
        cached = json.loads(cp.read_text())
        log(f"using cached mergekit results from {cp}")
    run_mk = not a.skip_mergekit and cached is None
    run_mm = not a.skip_modelmix
    if run_mk:
        ensure_peers()
    names = compare_names(ckpt, a.compare)

    report: dict[str, Any] = {
        "size": a.size,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "settings": {
            "repeat": a.repeat,
            "repeat_modelmix": a.repeat_modelmix or a.repeat,
            "threads": a.threads,
            "warm_page_cache": not a.no_warm,
            "compare_tensors": names,
            "mergekit_cached_from": None if cached is None else cached.get("date"),
        },
        "recipes": {},
    }
    for rname in recipes:
        recipe = materialize_recipe(rname, ckpt, recipe_dir)
        models = recipe_models(recipe)
        entry: dict[str, Any] = {}
        report["recipes"][rname] = entry
        tools = [t for t in TOOLS if (t == "mergekit" and run_mk) or (t == "modelmix" and run_mm)]
        if cached is not None and rname in cached.get("recipes", {}):
            entry["mergekit"] = {**cached["recipes"][rname], "cached": True}
            entry["mergekit"]["summary"] = summarize(entry["mergekit"].get("runs", []))
        runs: dict[str, list[dict[str, Any]]] = {t: [] for t in tools}
        n_mm = a.repeat_modelmix or a.repeat
        for rep in range(max(a.repeat, n_mm)):
            for tool in tools:
                if rep >= (n_mm if tool == "modelmix" else a.repeat):
                    continue
                out = size_dir / f"out-{tool}-{rname}"
                if out.exists():
                    shutil.rmtree(out)
                cmd = tool_command(tool, recipe, out, a.threads)
                warm_s = None if a.no_warm else round(warm_page_cache(models), 2)
                log(f"{rname} [{rep + 1}/{n_mm if tool == 'modelmix' else a.repeat}] {tool}: {' '.join(cmd)}")
                res = run_timed(cmd, logs / f"{tool}-{rname}-{rep}.log", a.timeout)
                res["warm_read_s"] = warm_s
                runs[tool].append(res)
                if "error" in res:
                    log(f"  FAILED: {res['error'][:1500]}")
                else:
                    log(f"  {res['wall_s']:.1f}s, peak {res['peak_rss_gb']:.2f} GB")
                    if tool == "mergekit" and rep == 0:
                        save_reference(out, names, ref_path(size_dir, rname))
                    if tool == "modelmix" and rep == 0:
                        ref = ref_path(size_dir, rname)
                        if ref.exists() and (run_mk or cached is not None):
                            entry["compare"] = compare_outputs(ref, out, ckpt / "base")
                        else:
                            entry["compare"] = None
                if not a.keep_outputs and out.exists():
                    shutil.rmtree(out)
                os.sync()
        for tool in tools:
            entry[tool] = {"cmd": tool_command(tool, recipe, Path("OUT"), a.threads), "runs": runs[tool]}
            entry[tool]["summary"] = summarize(runs[tool])
        save_results(a, report, run_mk, quiet=True)

    md = table(a.size, report["recipes"])
    print(md)
    cmp_notes = [
        f"- {r}: compared {c['tensors']} tensors; max abs diff {c['max_abs_diff']:.3e}, "
        f"max rel L2 {c['max_rel_l2']:.3e}, max diff/task-vector norm {c['max_rel_to_task_vector'] or 0:.3e}"
        + (
            " (stochastic method: different random masks, elementwise match not expected)"
            if r in STOCHASTIC
            else ""
        )
        for r, e in report["recipes"].items()
        if (c := e.get("compare")) and c.get("max_abs_diff") is not None
    ]
    if cmp_notes:
        print("\nCorrectness vs mergekit output:\n" + "\n".join(cmp_notes))
    report["markdown"] = md

    save_results(a, report, run_mk, quiet=False)
    failed = any(
        not e[t]["summary"].get("ok", True)
        for e in report["recipes"].values()
        for t in TOOLS
        if t in e and "summary" in e[t]
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
