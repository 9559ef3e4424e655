"""Opening model references as tensor sources: local dirs, sharded safetensors, hub cache, LoRA, pickles.

A :class:`Checkpoint` knows every tensor's name, dtype, shape and location after reading only headers,
so a whole recipe can be validated before a single weight byte is read.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from modelmix.errors import InputError
from modelmix.io.safetensors_file import FileReader, TensorEntry, read_header


def resolve_model_path(ref: str, *, base_dir: Path | None = None) -> Path:
    """A local directory/file for ``ref``: a path (absolute, CWD- or recipe-relative) or a cached hub repo id.

    Hub ids (``org/name`` or ``org/name@revision``) are resolved through the local Hugging Face cache only:
    modelmix never downloads, so an uncached id is an error that says how to fetch it.
    """
    candidates = [Path(ref).expanduser()]
    if base_dir is not None and not Path(ref).is_absolute():
        candidates.append(base_dir / ref)
    for c in candidates:
        if c.exists():
            return c.resolve()
    repo, _, revision = ref.partition("@")
    # org/name; a path spelled ./x, ../x, /x or ~/x is a path, never a hub id
    looks_like_repo = re.fullmatch(r"[\w-][\w.-]*/[\w.-]+", repo) is not None and not repo.startswith((".", "~"))
    if looks_like_repo:
        try:
            from huggingface_hub import snapshot_download

            path = snapshot_download(repo, revision=revision or None, local_files_only=True)
            return Path(path)
        except Exception:
            pass
    where = " or ".join(str(c) for c in candidates)
    hint = (
        f" It is not in the local Hugging Face cache either (HF_HOME={os.environ.get('HF_HOME', '~/.cache/huggingface')}); "
        f"modelmix never downloads: fetch it first with `huggingface-cli download {repo}`."
        if looks_like_repo
        else ""
    )
    raise InputError(f'Model "{ref}" not found: no such file or directory ({where}).{hint}')


@dataclass
class LoraAdapter:
    """A PEFT LoRA adapter, applied per tensor as W + scale * B @ A (never a merged full model)."""

    path: Path
    pairs: dict[str, tuple[TensorEntry, TensorEntry, float, bool]]  # base name -> (A, B, scale, transpose)
    full: dict[str, TensorEntry]  # modules_to_save: whole replacement tensors

    @classmethod
    def open(cls, path: Path, base_names: set[str]) -> LoraAdapter:
        cfg_path = path / "adapter_config.json"
        if not cfg_path.is_file():
            raise InputError(f"LoRA adapter {path} has no adapter_config.json; is it a PEFT LoRA directory?")
        cfg = json.loads(cfg_path.read_text())
        if cfg.get("peft_type", "LORA").upper() != "LORA":
            raise InputError(f"Adapter {path} is a {cfg.get('peft_type')} adapter; only LoRA adapters are supported.")
        if cfg.get("use_dora"):
            raise InputError(f"Adapter {path} uses DoRA, which modelmix cannot apply yet; merge it with PEFT first.")
        weights = path / "adapter_model.safetensors"
        if not weights.is_file():
            raise InputError(
                f"LoRA adapter {path} has no adapter_model.safetensors (pickled adapter_model.bin is not read)."
            )
        entries, _ = read_header(weights)
        alpha = float(cfg.get("lora_alpha", 8))
        rslora = bool(cfg.get("use_rslora", False))
        fan_in_fan_out = bool(cfg.get("fan_in_fan_out", False))
        alpha_pattern: dict[str, float] = cfg.get("alpha_pattern") or {}

        def base_name(key: str, marker: str) -> str:
            stem = key.split(marker)[0]
            for prefix in ("base_model.model.", "base_model."):
                if stem.startswith(prefix):
                    stem = stem[len(prefix):]
                    break
            for cand in (stem + ".weight", "model." + stem + ".weight"):
                if cand in base_names:
                    return cand
            raise InputError(
                f"LoRA adapter {path}: tensor {key!r} targets {stem!r}, which has no matching weight in the base "
                f"model. Was the adapter trained on a different architecture?"
            )

        pairs: dict[str, tuple[TensorEntry, TensorEntry, float, bool]] = {}
        full: dict[str, TensorEntry] = {}
        for key, entry in entries.items():
            for a_mark, b_mark, is_embed in ((".lora_A.", ".lora_B.", False), (".lora_embedding_A", ".lora_embedding_B", True)):
                if a_mark in key:
                    b_key = key.replace(a_mark, b_mark)
                    if b_key not in entries:
                        raise InputError(f"LoRA adapter {weights}: {key!r} has no matching {b_key!r}.")
                    target = base_name(key, a_mark)
                    module = target[: -len(".weight")]
                    a_alpha = next((float(v) for k, v in alpha_pattern.items() if re.search(k, module)), alpha)
                    r = entry.shape[0]
                    scale = a_alpha / (math.sqrt(r) if rslora else r)
                    pairs[target] = (entry, entries[b_key], scale, is_embed or fan_in_fan_out)
                    break
            else:
                if ".lora_B." in key or ".lora_embedding_B" in key or "lora_magnitude" in key:
                    continue
                stem = key.replace(".modules_to_save.default", "").removeprefix("base_model.model.")
                if stem in base_names:
                    full[stem] = entry
        if not pairs and not full:
            raise InputError(f"LoRA adapter {path} contains no LoRA tensors.")
        return cls(path, pairs, full)


class Checkpoint:
    """Tensor index of one model reference (``path`` or ``path+lora``), reading only headers up front."""

    def __init__(self, ref: str, *, base_dir: Path | None = None, allow_pickle: bool = False, lora: str | None = None):
        self.ref = ref
        self.path = resolve_model_path(ref, base_dir=base_dir)
        self.entries: dict[str, TensorEntry] = {}
        self._pickled: dict[str, torch.Tensor] | None = None
        self._reader = FileReader()
        self._index_tensors(allow_pickle)
        self.lora: LoraAdapter | None = None
        if lora:
            try:
                lora_path = resolve_model_path(lora, base_dir=base_dir)
            except InputError as e:
                raise InputError(f"LoRA adapter of {ref}: {e}") from None
            self.lora = LoraAdapter.open(lora_path, set(self.entries))

    # -- discovery -------------------------------------------------------------------------------
    def _index_tensors(self, allow_pickle: bool) -> None:
        p = self.path
        if p.is_file():
            files = [p]
        else:
            index = p / "model.safetensors.index.json"
            single = p / "model.safetensors"
            if index.is_file():
                files = self._files_from_index(index)
            elif single.is_file():
                files = [single]
            else:
                files = sorted(p.glob("*.safetensors"))
                # sentence-transformers style dirs keep weights at the top level too; adapters are not models
                files = [f for f in files if f.name != "adapter_model.safetensors"]
        if files and all(f.suffix == ".safetensors" for f in files):
            for f in files:
                entries, _ = read_header(f)
                for name, e in entries.items():
                    if name in self.entries:
                        raise InputError(f"Tensor {name!r} appears in two shards of {p}: {self.entries[name].file.name} and {f.name}.")
                    self.entries[name] = e
            if not self.entries:
                raise InputError(f"{p} contains no tensors.")
            return
        pickles = [p] if p.is_file() else self._pickle_files(p)
        if not pickles:
            raise InputError(
                f"No model weights found in {p}: expected model.safetensors, a sharded model.safetensors.index.json, "
                f"or (with --allow-pickle) pytorch_model.bin."
            )
        if not allow_pickle:
            raise InputError(
                f"{p} holds only pickle checkpoints ({', '.join(f.name for f in pickles[:3])}). Pickles can execute "
                f"code when loaded, so modelmix refuses them by default; pass --allow-pickle to load them with "
                f"torch.load(weights_only=True), or convert them to safetensors."
            )
        self._pickled = {}
        for f in pickles:
            try:
                sd = torch.load(f, map_location="cpu", weights_only=True, mmap=True)
            except Exception as e:
                raise InputError(f"Cannot load pickle checkpoint {f} with weights_only=True: {e}") from None
            self._pickled.update({k: v for k, v in sd.items() if isinstance(v, torch.Tensor)})
        for name, t in self._pickled.items():
            self.entries[name] = TensorEntry(name, pickles[0], t.dtype, tuple(t.shape), 0, t.numel() * t.element_size())

    def _files_from_index(self, index: Path) -> list[Path]:
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError, TypeError) as e:
            raise InputError(f"{index} is corrupt: cannot read its weight_map ({e}).") from None
        files = []
        for shard in dict.fromkeys(weight_map.values()):
            f = index.parent / shard
            if not f.is_file():
                raise InputError(
                    f"Shard {shard} named in {index} is missing (it should hold tensors such as "
                    f"{next(k for k, v in weight_map.items() if v == shard)!r})."
                )
            files.append(f)
        return files

    @staticmethod
    def _pickle_files(p: Path) -> list[Path]:
        index = p / "pytorch_model.bin.index.json"
        if index.is_file():
            return [p / s for s in dict.fromkeys(json.loads(index.read_text())["weight_map"].values())]
        return sorted(f for f in p.iterdir() if f.suffix in (".bin", ".pt", ".pth") and f.is_file())

    # -- metadata ----------------------------------------------------------------------------------
    @property
    def model_dir(self) -> Path:
        return self.path if self.path.is_dir() else self.path.parent

    def config(self) -> dict:
        cfg = self.model_dir / "config.json"
        if not cfg.is_file():
            return {}
        try:
            return json.loads(cfg.read_text())
        except ValueError as e:
            raise InputError(f"{cfg} is not valid JSON: {e}") from None

    def names(self) -> list[str]:
        return list(self.entries)

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def entry(self, name: str) -> TensorEntry:
        try:
            return self.entries[name]
        except KeyError:
            raise InputError(f"Model {self.ref} has no tensor named {name!r}.") from None

    # -- reading -----------------------------------------------------------------------------------
    def read(self, name: str, rows: tuple[int, int] | None = None) -> torch.Tensor:
        """The tensor (or a range of its rows) in its stored dtype, with any LoRA delta applied."""
        if self.lora is not None and name in self.lora.full:
            t = self._reader.read(self.lora.full[name], rows)
        elif self._pickled is not None:
            t = self._pickled[name]
            t = (t if rows is None else t[rows[0] : rows[1]]).clone()
        else:
            t = self._reader.read(self.entries[name], rows)
        if self.lora is not None and name in self.lora.pairs:
            t = self._apply_lora(name, t, rows)
        return t

    def can_read_into(self, name: str) -> bool:
        """True when ``name`` can be read straight into a caller buffer (plain safetensors, no LoRA)."""
        return self._pickled is None and (self.lora is None or (name not in self.lora.pairs and name not in self.lora.full))

    def read_into(self, name: str, out: torch.Tensor, rows: tuple[int, int] | None = None) -> None:
        """Fill ``out`` (contiguous CPU, stored dtype) with the tensor, or with a range of its rows."""
        e = self.entries[name]
        if rows is None:
            self._reader.read_into(e, out)
        else:
            self._reader.read_into(e, out, rows[0] * e.row_bytes, (rows[1] - rows[0]) * e.row_bytes)

    def _apply_lora(self, name: str, w: torch.Tensor, rows: tuple[int, int] | None) -> torch.Tensor:
        a_e, b_e, scale, transpose = self.lora.pairs[name]  # type: ignore[union-attr]
        a = self._reader.read(a_e).float()
        b = self._reader.read(b_e).float()
        if transpose:  # embeddings / Conv1D: delta = (B @ A)^T, rows of W index A's columns
            if rows is not None:
                a = a[:, rows[0] : rows[1]]
            delta = (b @ a).T
        else:
            if rows is not None:
                b = b[rows[0] : rows[1]]
            delta = b @ a
        if delta.shape != w.shape:
            raise InputError(
                f"LoRA adapter {self.lora.path}: the delta for {name!r} has shape {list(delta.shape)} but the base "  # type: ignore[union-attr]
                f"tensor has shape {list(w.shape)}."
            )
        return w.float() + scale * delta  # stays float32: rounding back to bf16 would lose the delta

    def close(self) -> None:
        self._reader.close()
