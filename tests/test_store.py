"""The router's store: round trips, bad feedback, WAL on SQLite, and nothing acknowledged lost to kill -9."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

from modelmix.errors import DataError
from modelmix.router.store import Store, UnknownInteraction

pytest.importorskip("sqlalchemy")


def _log(s: Store, q: str = "what is 2 + 2", route: str = "arithmetic", answer: str | None = "4") -> str:
    return s.log(q, {route: 0.8, "chat": 0.15, "none": 0.05}, "single", ["adder"], [1.0], answer=answer,
                 latency_ms=12.5, extra={"per_model_ms": {"adder": 11.0}})


def test_round_trip_and_stats(tmp_path):
    with Store(tmp_path / "r.db") as s:
        a = _log(s)
        b = _log(s, "how are you", "chat", "fine")
        c = _log(s, "add 1 and 2", answer=None)
        assert a.startswith("cmpl-") and len({a, b, c}) == 3
        got = s.interaction(a)
        assert got["query"] == "what is 2 + 2" and got["route"] == "arithmetic" and got["models"] == ["adder"]
        assert got["distribution"]["arithmetic"] == 0.8 and got["extra"]["per_model_ms"]["adder"] == 11.0
        e1 = s.add_feedback(a, 1.0, comment="right")
        e2 = s.add_feedback(b, thumbs="down")
        s.add_feedback(c, 0.5)
        assert e2 > e1 and s.feedback_events() == 3
        st = s.stats()
        assert st["arithmetic"]["interactions"] == 2 and st["arithmetic"]["feedback"] == 2
        assert st["arithmetic"]["mean_score"] == pytest.approx(0.75)
        assert st["chat"]["mean_score"] == 0.0 and st["chat"]["models"]["adder"]["feedback"] == 1
        ex = list(s.export())
        assert ex == [{"input": "what is 2 + 2", "output": "4", "score": 1.0},
                      {"input": "how are you", "output": "fine", "score": 0.0}]  # no answer, no example
    # reopened: everything is still there
    with Store(f"sqlite:///{tmp_path / 'r.db'}") as s:
        assert s.feedback_events() == 3 and s.interaction(a)["answer"] == "4"


@pytest.mark.parametrize("kw,match", [
    ({"score": 1.5}, "between 0 and 1"),
    ({"score": float("nan")}, "between 0 and 1"),
    ({"score": True}, "between 0 and 1"),
    ({"thumbs": "sideways"}, '"up" or "down"'),
    ({}, "exactly one of"),
    ({"score": 1.0, "thumbs": "up"}, "exactly one of"),
    ({"score": 1.0, "comment": {"x": 1}}, '"comment" must be a string'),
])
def test_bad_feedback_is_refused_and_writes_nothing(tmp_path, kw, match):
    with Store(tmp_path / "r.db") as s:
        a = _log(s)
        with pytest.raises(DataError, match=match):
            s.add_feedback(a, **kw)
        with pytest.raises(UnknownInteraction, match="cmpl-nope"):
            s.add_feedback("cmpl-nope", 1.0)
        assert s.feedback_events() == 0


def test_sqlite_runs_in_wal_mode_with_full_sync(tmp_path):
    with Store(tmp_path / "r.db") as s:
        _log(s)
        with s.engine.connect() as c:
            assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert c.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    assert sqlite3.connect(tmp_path / "r.db").execute("PRAGMA journal_mode").fetchone()[0] == "wal"


WRITER = textwrap.dedent("""
    import sys
    from modelmix.router.store import Store
    s = Store(sys.argv[1])
    iid = s.log("q", {"a": 1.0}, "single", ["m"], [1.0], interaction_id=sys.argv[2])
    print("READY", flush=True)
    while True:
        e = s.add_feedback(iid, 0.5)
        print("ACK", e, flush=True)   # acknowledged: the commit has returned
""")


def test_kill_9_loses_no_acknowledged_feedback(tmp_path):
    db = tmp_path / "r.db"
    Store(db).close()
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(db), f"cmpl-w{i}"], stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}) for i in range(2)]
    acked: set[int] = set()
    try:
        deadline = time.time() + 60
        lines = [iter(p.stdout) for p in procs]  # type: ignore[arg-type]
        for it in lines:
            assert next(it).startswith("READY")
        while len(acked) < 150 and time.time() < deadline:  # two writers on one file, interleaved
            for it in lines:
                line = next(it)
                if line.startswith("ACK"):
                    acked.add(int(line.split()[1]))
    finally:
        for p in procs:
            p.send_signal(signal.SIGKILL)
            p.wait()
    assert len(acked) >= 150
    with Store(db) as s:
        stored = s.feedback_ids()
    assert acked <= stored, f"{len(acked - stored)} acknowledged events lost"


def test_unusable_store_is_a_clear_error(tmp_path):
    from modelmix.errors import InputError

    with pytest.raises(InputError, match="feedback store"):
        Store("nosuchdialect://x")
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro" / "r.db").write_text("not a database")
    with pytest.raises(InputError, match="cannot create its tables"):
        Store(tmp_path / "ro" / "r.db")


def test_route_stats_and_export_commands(tmp_path):
    import yaml

    from conftest import run_cli

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    cfg = tmp_path / "router.yml"
    cfg.write_text(yaml.safe_dump({"models": {"m": {"path": "m"}}, "feedback": {"store": "r.db"}, "routes": [
        {"name": "arithmetic", "models": ["m"], "utterances": ["add 2 and 3"]},
        {"name": "chat", "models": ["m"], "utterances": ["how are you"]}]}))
    with Store(tmp_path / "r.db") as s:
        a = s.log("what is 2 + 2", {"arithmetic": 0.8, "chat": 0.2}, "single", ["m"], [1.0], answer="4")
        s.add_feedback(a, thumbs="up")
        _log(s, "hello", "chat", "hi")
    code, out, err = run_cli("route", "stats", str(cfg), "--json")
    assert code == 0, err
    st = json.loads(out)
    assert st["feedback_events"] == 1 and st["routes"]["arithmetic"]["mean_score"] == 1.0
    assert st["routes"]["chat"]["interactions"] == 1 and st["routes"]["chat"]["feedback"] == 0
    assert st["routes"]["arithmetic"]["learner"]["m"]["alpha"] == pytest.approx(2.0 + 0.8)  # prior 2 + weight 0.8
    assert st["routes"]["chat"]["learner"]["m"]["alpha"] == pytest.approx(2.0 + 0.2)
    code, out, err = run_cli("route", "stats", str(cfg))
    assert code == 0 and "arithmetic" in out and "1 feedback events" in out
    dst = tmp_path / "fb.jsonl"
    code, out, err = run_cli("route", "export", str(cfg), "--out", str(dst))
    assert code == 0, err
    assert [json.loads(x) for x in dst.read_text().splitlines()] == [{"input": "what is 2 + 2", "output": "4", "score": 1.0}]
    code, _, err = run_cli("route", "export", str(cfg), "--out", str(dst))
    assert code == 2 and "--overwrite" in err
    code, _, err = run_cli("route", "export", str(cfg), "--out", str(tmp_path / "r.db"), "--overwrite")
    assert code == 2 and "r.db" in err  # never on top of the store
    assert Store(tmp_path / "r.db").feedback_events() == 1
