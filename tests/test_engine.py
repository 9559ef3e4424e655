"""The serving engine (``router.engine``): batched generation gives the answers of one request alone, rows
join a running batch and leave it, classification is batched, failures reach the caller only."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from modelmix.router.backends import BackendError, LocalBackend, mixed_generate
from modelmix.router.engine import Engine


@pytest.fixture(scope="module")
def models(zoo_dir: Path):
    from modelmix.zoo import load_zoo

    z = load_zoo(zoo_dir)
    return {n: LocalBackend(n, z.model_path(p), 8) for n, p in
            [("addition", "experts/addition"), ("reverse", "experts/reverse"), ("base", "base")]}


@pytest.fixture(autouse=True)
def _close_engines(monkeypatch):
    """Every engine a test starts is stopped (and its thread joined) when the test ends."""
    made = []
    init = Engine.__init__

    def tracked(self, *a, **kw):
        init(self, *a, **kw)
        made.append(self)

    monkeypatch.setattr(Engine, "__init__", tracked)
    yield
    for e in made:
        e.close()
    assert not any(e._thread.is_alive() for e in made)


PROMPTS = ["3+4=", "12+30=", "reverse abc", "what is 2 + 5", "7+5=", "reverse the word dogs", "1+1=",
           "compute 40 plus 2 please"]


def _direct(b: LocalBackend, prompt: str, budget: int, one_line: bool = True) -> str:
    ids, _ = b.prompt_ids([{"role": "user", "content": prompt}])
    return "".join(mixed_generate([b], [1.0], ids, budget, one_line))


def _via(engine: Engine, b: LocalBackend, prompt: str, budget: int, one_line: bool = True):
    ids, _ = b.prompt_ids([{"role": "user", "content": prompt}])
    return engine.generate(b, ids, budget, one_line)


@pytest.mark.parametrize("one_line", [True, False])
def test_a_batch_gives_each_request_its_answer_alone(models, one_line):
    engine = Engine(max_batch=16)
    budget = 8 if one_line else 14
    for b in models.values():
        want = [_direct(b, p, budget, one_line) for p in PROMPTS]
        streams = [_via(engine, b, p, budget, one_line) for p in PROMPTS]  # all queued before the first step
        got = ["".join(s) for s in streams]
        assert got == want, b.name
    assert engine.rows_stepped / engine.steps > 2  # the rows really shared forward passes


def test_rows_join_a_running_batch_and_leave_it(models):
    """A request arriving mid-decode joins at the next step (left-padded to the batch's cache) and gets the
    answer it gets alone; a finished row leaves while others go on; a full batch makes the rest wait."""
    b = models["base"]
    engine = Engine(max_batch=3)
    long_prompt = "compute 40 plus 2 please and then some more words"
    want_long = _direct(b, long_prompt, 24, one_line=False)
    want = [_direct(b, p, 6, one_line=False) for p in PROMPTS]
    first = iter(_via(engine, b, long_prompt, 24, one_line=False))
    pieces = [next(first)]  # the long row is decoding now
    streams = [_via(engine, b, p, 6, one_line=False) for p in PROMPTS]
    got = ["".join(s) for s in streams]
    pieces.extend(first)
    assert "".join(pieces) == want_long
    assert got == want
    time.sleep(0.05)
    assert not engine._batches and not engine._pending  # everything finished and left


def test_batch_of_several_models_and_threads(models):
    engine = Engine()
    want = {(n, p): _direct(b, p, 8) for n, b in models.items() for p in PROMPTS}
    got: dict = {}

    def ask(n: str, p: str) -> None:
        got[(n, p)] = "".join(_via(engine, models[n], p, 8))

    ts = [threading.Thread(target=ask, args=k) for k in want]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert got == want


def test_an_abandoned_stream_frees_its_row(models):
    b = models["base"]
    engine = Engine()
    it = iter(_via(engine, b, "compute 40 plus 2 please", 200, one_line=False))
    next(it)
    it.close()  # the client went away
    deadline = time.time() + 10
    while engine._batches and time.time() < deadline:
        time.sleep(0.01)
    assert not engine._batches
    assert "".join(_via(engine, b, "3+4=", 8)) == _direct(b, "3+4=", 8)  # and the engine goes on


def test_a_failing_model_fails_its_requests_only(models):
    class Broken:
        name = "broken"

        def __init__(self, em):
            self.em = _Em(em)

    class _Em:
        def __init__(self, em):
            self._em = em
            self.tokenizer, self.device = em.tokenizer, em.device

        def threads(self):
            return self._em.threads()

        @property
        def model(self):
            raise RuntimeError("weights are gone")

    engine = Engine()
    bad = Broken(models["base"].em)
    with pytest.raises(BackendError, match="broken failed while generating: RuntimeError: weights are gone"):
        "".join(engine.generate(bad, [1, 2, 3], 4, True))
    assert "".join(_via(engine, models["addition"], "3+4=", 8)) == _direct(models["addition"], "3+4=", 8)


def test_token_mixing_through_the_engine_equals_the_direct_loop(models):
    engine = Engine()
    bs = [models["addition"], models["base"]]
    ids, _ = bs[0].prompt_ids([{"role": "user", "content": "12+30="}])
    for w in ([1.0, 0.0], [0.5, 0.5]):
        assert "".join(engine.mixed(bs, w, ids, 8, True)) == "".join(mixed_generate(bs, w, ids, 8, True))


def test_classification_is_batched_and_equals_classify(zoo_dir):
    from modelmix.router import Router
    from modelmix.zoo import load_zoo

    router = Router.from_config({
        "models": {"m": {"path": str(load_zoo(zoo_dir).model_path("base"))}},
        "routes": [{"name": "arithmetic", "models": ["m"], "utterances": ["3+4=", "what is 2 + 5", "add 1 and 8"]},
                   {"name": "reverse", "models": ["m"], "utterances": ["reverse abc", "write cat backwards"]}]})
    engine = Engine()
    queries = ["1+2=", "reverse the word dog", "tell me a story", "add 3 and 4"] * 3
    got: dict = {}

    def ask(i: int) -> None:
        got[i] = engine.classify(router.classifier, queries[i])

    ts = [threading.Thread(target=ask, args=(i,)) for i in range(len(queries))]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    for i, q in enumerate(queries):
        want = router.classify(q).distribution
        assert got[i].distribution.keys() == want.keys()
        assert all(abs(got[i].distribution[k] - want[k]) < 1e-5 for k in want)
        assert got[i].seconds > 0


def test_judge_loglik_is_the_mean_token_log_probability(models):
    import torch

    b = models["addition"]
    msgs = [{"role": "user", "content": "3+4="}]
    got = b.loglik(msgs, ["7", "banana", ""])
    tok, em = b.em.tokenizer, b.em
    prompt = tok("3+4=" + em.separator)["input_ids"]
    full = tok("3+4=" + em.separator + "7\n")["input_ids"]
    with torch.inference_mode():
        lp = torch.log_softmax(em.model(input_ids=torch.tensor([full])).logits[0].float(), -1)
    want = float(torch.stack([lp[i - 1, full[i]] for i in range(len(prompt), len(full))]).mean())
    assert abs(got[0] - want) < 1e-4 and got[2] == float("-inf")
    q = "add 12+30 ="  # the zoo's own format: the expert's greedy answer is likelier than a wrong one
    own = _direct(b, q, 8)
    mine, other = b.loglik([{"role": "user", "content": q}], [own, "banana"])
    assert mine > other


def test_judge_ranker_picks_the_answer_the_judge_finds_likeliest(zoo_dir, tmp_path):
    from modelmix.router import Router
    from modelmix.router.serve import Service
    from modelmix.router.store import Store
    from modelmix.zoo import load_zoo

    z = load_zoo(zoo_dir)
    raw = {"models": {"addition": {"path": str(z.model_path("experts/addition")), "max_new_tokens": 8},
                      "reverse": {"path": str(z.model_path("experts/reverse")), "max_new_tokens": 8}},
           "routes": [{"name": "arithmetic", "models": ["addition"], "utterances": ["3+4=", "add 1 and 8"]},
                      {"name": "reverse", "models": ["reverse"], "utterances": ["reverse abc", "write cat backwards"]}],
           "feedback": {"store": str(tmp_path / "r.db")}, "serve": {"ranker": "judge", "judge": "addition"}}
    router = Router.from_config(raw)
    store = Store(router.cfg.store_url())
    svc = Service(router, store)  # its engine is closed by the fixture
    from modelmix.router.decide import Decision

    d = Decision("rank", ["arithmetic", "reverse"], ["addition", "reverse"], [0.5, 0.5], "test",
                 router.classify("12+30="))
    text, meta = svc.run(d, "router", [{"role": "user", "content": "add 12+30 ="}], 8)
    assert meta["ranker"] == "judge" and len(meta["candidates"]) == 2
    scores = {c["model"]: c["score"] for c in meta["candidates"]}
    want = svc.backends["addition"].loglik([{"role": "user", "content": "add 12+30 ="}],
                                           [c["answer"] for c in meta["candidates"]])
    assert [c["score"] for c in meta["candidates"]] == pytest.approx(want)
    assert meta["chosen"] == max(scores, key=scores.get) and text == dict(
        (c["model"], c["answer"]) for c in meta["candidates"])[meta["chosen"]]
    store.close()


def test_close_fails_waiting_requests_and_joins_the_thread(models):
    """A request still decoding when the engine closes gets an error, never a silently cut answer. On a
    loaded machine the engine thread may finish the whole answer before close() runs (nothing in flight
    then): that attempt says nothing, and another is made."""
    for _ in range(5):
        engine = Engine()
        it = iter(_via(engine, models["base"], "compute 40 plus 2 please", 500, one_line=False))
        next(it)
        engine.close()
        assert not engine._thread.is_alive()
        try:
            list(it)
        except BackendError as e:
            assert "shutting down" in str(e)
            return
    pytest.fail("every answer was complete before close() ran: no request was in flight to fail")


def test_engine_threads_apply_to_the_engine_thread_only():
    """``serve.threads`` sets the engine thread's torch threads; the thread that built the engine keeps its
    own (torch's thread count is per thread)."""
    import torch

    from modelmix.router.config import ServeSpec

    assert ServeSpec().threads is None
    with pytest.raises(ValueError):
        ServeSpec(threads=0)
    before = torch.get_num_threads()
    e = Engine(4, threads=1)
    assert e.call(torch.get_num_threads) == 1
    assert torch.get_num_threads() == before
    e.close()
    e = Engine(4)
    assert e.call(torch.get_num_threads) == before
    e.close()
