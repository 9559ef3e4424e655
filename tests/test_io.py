"""Checkpoint reading (shards, corruption, pickles, LoRA, hub cache) and the atomic streaming writer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import make_model
from modelmix.errors import InputError, OutputError
from modelmix.io.checkpoint import Checkpoint, resolve_model_path
from modelmix.io.safetensors_file import read_header
from modelmix.io.writer import ModelWriter, OutSpec, plan_shards


def test_reader_matches_safetensors(tmp_path: Path):
    sd = {"a": torch.randn(5, 3).to(torch.bfloat16), "b": torch.arange(7, dtype=torch.int64), "c": torch.tensor(2.5),
          "d": torch.randn(4, 2, 3).half()}
    save_file(sd, str(tmp_path / "model.safetensors"))
    ck = Checkpoint(str(tmp_path))
    for k, v in sd.items():
        assert torch.equal(ck.read(k), v)
    assert torch.equal(ck.read("d", rows=(1, 3)), sd["d"][1:3])
    assert torch.equal(ck.read("a", rows=(4, 5)), sd["a"][4:5])


def test_sharded_dir_and_missing_shard(tmp_path: Path):
    sd = make_model(tmp_path / "m", shards=3)
    ck = Checkpoint(str(tmp_path / "m"))
    assert set(ck.names()) == set(sd)
    for k in list(sd)[:5]:
        assert torch.equal(ck.read(k).float(), sd[k])
    (tmp_path / "m" / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(InputError, match="model-00002-of-00003.safetensors.*missing"):
        Checkpoint(str(tmp_path / "m"))


def test_truncated_and_corrupt_files(tmp_path: Path):
    save_file({"w": torch.randn(64, 64)}, str(tmp_path / "model.safetensors"))
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) - 100])
    with pytest.raises(InputError, match="truncated.*'w'"):
        Checkpoint(str(tmp_path))
    (tmp_path / "model.safetensors").write_bytes(data[:8] + b"{not json" + data[17:])
    with pytest.raises(InputError, match="corrupt"):
        Checkpoint(str(tmp_path))
    (tmp_path / "model.safetensors").write_bytes(b"abc")
    with pytest.raises(InputError, match="not a safetensors file"):
        Checkpoint(str(tmp_path))


def test_missing_model_and_hub_cache(tmp_path: Path, monkeypatch):
    with pytest.raises(InputError, match="not found"):
        resolve_model_path(str(tmp_path / "nope"))
    with pytest.raises(InputError, match="Hugging Face cache.*never downloads"):
        resolve_model_path("some-org/some-model")
    # a cached repo resolves offline through the standard cache layout
    hub = tmp_path / "hf" / "hub"
    snap = hub / "models--acme--tiny" / "snapshots" / "0123abcd"
    snap.mkdir(parents=True)
    make_model(snap, tokenizer=False)
    (hub / "models--acme--tiny" / "refs").mkdir()
    (hub / "models--acme--tiny" / "refs" / "main").write_text("0123abcd")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    import importlib

    import huggingface_hub.constants as c

    importlib.reload(c)
    try:
        import huggingface_hub._snapshot_download as sdl

        monkeypatch.setattr(sdl, "HF_HUB_CACHE", str(hub), raising=False)
        monkeypatch.setattr(c, "HF_HUB_CACHE", str(hub), raising=False)
        p = resolve_model_path("acme/tiny")
    finally:
        importlib.reload(c)
    assert p.resolve() == snap.resolve()


def test_pickles_refused_unless_allowed(tmp_path: Path):
    d = tmp_path / "pkl"
    d.mkdir()
    sd = {"w": torch.randn(3, 3)}
    torch.save(sd, d / "pytorch_model.bin")
    with pytest.raises(InputError, match="--allow-pickle"):
        Checkpoint(str(d))
    ck = Checkpoint(str(d), allow_pickle=True)
    assert torch.equal(ck.read("w"), sd["w"])


def _write_lora(d: Path, targets: dict[str, tuple[int, int]], r: int, alpha: float, seed: int = 0) -> dict:
    d.mkdir(parents=True)
    g = torch.Generator().manual_seed(seed)
    t = {}
    for name, (out_f, in_f) in targets.items():
        stem = "base_model.model." + name.removesuffix(".weight")
        t[stem + ".lora_A.weight"] = torch.randn(r, in_f, generator=g)
        t[stem + ".lora_B.weight"] = torch.randn(out_f, r, generator=g)
    save_file(t, str(d / "adapter_model.safetensors"))
    (d / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": r, "lora_alpha": alpha}))
    return t


def test_lora_applied_per_tensor(tmp_path: Path):
    base = make_model(tmp_path / "base")
    q = "model.layers.1.self_attn.q_proj.weight"
    lt = _write_lora(tmp_path / "lora", {q: tuple(base[q].shape)}, r=4, alpha=8)
    ck = Checkpoint(str(tmp_path / "base"), lora=str(tmp_path / "lora"))
    a = lt["base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight"]
    b = lt["base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight"]
    expect = base[q] + (8 / 4) * b @ a
    torch.testing.assert_close(ck.read(q), expect)
    torch.testing.assert_close(ck.read(q, rows=(3, 9)), expect[3:9])
    other = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(ck.read(other), base[other])
    # adapter for another architecture -> clear error
    _write_lora(tmp_path / "bad", {"model.layers.9.foo.weight": (4, 4)}, r=2, alpha=2)
    with pytest.raises(InputError, match="no matching weight"):
        Checkpoint(str(tmp_path / "base"), lora=str(tmp_path / "bad"))


def test_writer_streams_shards_atomically(tmp_path: Path):
    tensors = {f"t{i}": torch.randn(10, 7).to(torch.bfloat16) for i in range(5)}
    specs = [OutSpec(k, v.dtype, tuple(v.shape)) for k, v in tensors.items()]
    assert [len(s) for s in plan_shards(specs, 300)] == [2, 2, 1]
    out = tmp_path / "out"
    w = ModelWriter(out, specs, max_shard_bytes=300, overwrite=False)
    assert not out.exists()
    for k in reversed(list(tensors)):  # any order, chunked
        w.write(k, tensors[k][5:], 5 * 7 * 2)
        w.write(k, tensors[k][:5], 0)
    w.commit()
    idx = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(idx["weight_map"].values())) == 3
    loaded = {}
    for f in set(idx["weight_map"].values()):
        loaded.update(load_file(str(out / f)))
    assert all(torch.equal(loaded[k], v) for k, v in tensors.items())
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temp dirs left
    with pytest.raises(OutputError, match="already exists.*--overwrite"):
        ModelWriter(out, specs, max_shard_bytes=300, overwrite=False)
    # abort leaves the existing output untouched
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    w2 = ModelWriter(out, specs, max_shard_bytes=10**9, overwrite=True)
    w2.abort()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    read_header(out / sorted(set(idx["weight_map"].values()))[0])


def test_writer_refuses_full_or_unwritable(tmp_path: Path, monkeypatch):
    specs = [OutSpec("w", torch.float32, (1000,))]
    import shutil
    from collections import namedtuple

    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(10, 10, 100))
    with pytest.raises(OutputError, match="Not enough free space"):
        ModelWriter(tmp_path / "o", specs, max_shard_bytes=10**9, overwrite=False)
    monkeypatch.undo()
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="does not exist|not a directory"):
        ModelWriter(tmp_path / "file" / "o", specs, max_shard_bytes=10**9, overwrite=False)
    assert not (tmp_path / "o").exists()


def _write_all(out: Path, tensors: dict, direct: bool, staged: bool = False, chunk_rows: int = 3) -> dict:
    specs = [OutSpec(k, v.dtype, tuple(v.shape)) for k, v in tensors.items()]
    w = ModelWriter(out, specs, max_shard_bytes=10**9, overwrite=False, direct_io=direct)
    for k, v in tensors.items():
        row = v[0].numel() * v.element_size()
        for r in range(0, v.shape[0], chunk_rows):
            part = v[r:r + chunk_rows]
            if staged:
                st = w.staging(k, r * row, part.numel() * part.element_size())
                if st is not None:
                    st.view(part.dtype).view(part.shape).copy_(part)
                    part = st.view(part.dtype).view(part.shape)
            w.write(k, part, r * row)
    w.commit()
    return load_file(str(out / "model.safetensors"))


@pytest.mark.parametrize("staged", [False, True])
def test_writer_direct_io_matches_buffered(tmp_path: Path, staged: bool):
    """Direct writes of aligned middles + buffered edges give the same file as plain buffered writes."""
    g = torch.Generator().manual_seed(0)
    tensors = {
        "odd": torch.randn(37, 1001, generator=g).to(torch.bfloat16),  # rows not a multiple of 4 KiB
        "big": torch.randn(96, 4096, generator=g),  # 16 KiB rows: aligned middles
        "tiny": torch.randn(3, generator=g).to(torch.float16),
        "tail": torch.randn(41, 777, generator=g),
    }
    a = _write_all(tmp_path / "direct", tensors, direct=True, staged=staged, chunk_rows=17)
    b = _write_all(tmp_path / "buffered", tensors, direct=False)
    assert (tmp_path / "direct" / "model.safetensors").read_bytes() == (tmp_path / "buffered" / "model.safetensors").read_bytes()
    assert all(torch.equal(a[k], v) and torch.equal(b[k], v) for k, v in tensors.items())
    head = read_header(tmp_path / "direct" / "model.safetensors")[0]
    assert min(e.offset for e in head.values()) % 4096 == 0  # data section starts on a 4 KiB boundary


def test_writer_falls_back_when_direct_io_is_refused(tmp_path: Path, monkeypatch):
    import errno
    import os

    tensors = {"w": torch.randn(64, 4096)}
    real_open, real_pwrite = os.open, os.pwrite
    direct_fds: set[int] = set()

    def fake_open(path, flags, *a):  # noqa: ANN001
        fd = real_open(path, flags & ~getattr(os, "O_DIRECT", 0), *a)
        if flags & getattr(os, "O_DIRECT", 0):
            direct_fds.add(fd)
        return fd

    def fake_pwrite(fd, buf, pos):  # noqa: ANN001
        if fd in direct_fds:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwrite(fd, buf, pos)

    monkeypatch.setattr(os, "open", fake_open)
    monkeypatch.setattr(os, "pwrite", fake_pwrite)
    got = _write_all(tmp_path / "o", tensors, direct=True, chunk_rows=16)
    assert torch.equal(got["w"], tensors["w"])


def test_writer_background_write_error_surfaces_and_leaves_nothing(tmp_path: Path, monkeypatch):
    """A failing background (direct) write is reported as a clear OutputError and no output appears."""
    import errno

    tensors = {"w": torch.randn(64, 4096)}
    real = ModelWriter._pwrite

    def failing(fd, raw, pos):  # noqa: ANN001
        if raw.numel() >= 65536:  # the aligned middles only
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, raw, pos)

    monkeypatch.setattr(ModelWriter, "_pwrite", staticmethod(failing))
    specs = [OutSpec("w", torch.float32, (64, 4096))]
    w = ModelWriter(tmp_path / "o", specs, max_shard_bytes=10**9, overwrite=False)
    with pytest.raises(OutputError, match="No space left"):
        try:
            for r in range(0, 64, 16):
                part = tensors["w"][r:r + 16]
                st = w.staging("w", r * 4096 * 4, part.numel() * 4)
                assert st is not None  # staged: the middle is written in the background
                st.view(torch.float32).view(part.shape).copy_(part)
                w.write("w", st.view(torch.float32).view(part.shape), r * 4096 * 4)
            w.commit()
        except BaseException:
            w.abort()  # as modelmix.merge does
            raise
    assert list(tmp_path.iterdir()) == []


def test_writer_abort_waits_for_background_writes(tmp_path: Path, monkeypatch):
    """abort() while background writes are in flight: they finish before the files are closed and removed."""
    import threading
    import time

    started = threading.Event()
    real = ModelWriter._direct

    def slow(self, *a):  # noqa: ANN001, ANN002
        started.set()
        time.sleep(0.2)
        return real(self, *a)

    monkeypatch.setattr(ModelWriter, "_direct", slow)
    w = ModelWriter(tmp_path / "o", [OutSpec("w", torch.float32, (64, 4096))], max_shard_bytes=10**9, overwrite=False)
    part = torch.randn(64, 4096)
    st = w.staging("w", 0, part.numel() * 4)
    if st is None:
        pytest.skip("no direct I/O on this file system")
    st.view(torch.float32).view(part.shape).copy_(part)
    w.write("w", st.view(torch.float32).view(part.shape), 0)
    assert started.wait(5)
    w.abort()
    assert all(s.fut is None for s in w._stages)  # every background write was waited for
    assert list(tmp_path.iterdir()) == []
