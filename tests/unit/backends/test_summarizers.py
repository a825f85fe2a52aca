"""The LLM summariser backends: the OpenAI-compatible client against a loopback server (real HTTP, the real
``openai`` client, replies from a tiny local causal LM), the transformers backend on that tiny model, and the
call limits (retries with backoff, concurrency slots, budgets)."""

from __future__ import annotations

import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from discover_ray.backends.base import BackendContext, BackendError
from discover_ray.backends.hf_chat import TransformersChatConfig, TransformersSummarizer
from discover_ray.backends.limits import (
    BudgetExhausted,
    CallBudget,
    CallLimits,
    backoff_waits,
    concurrency_slot,
    with_retries,
)
from discover_ray.backends.openai_chat import OpenAIConfig, OpenAISummarizer
from discover_ray.errors import ConfigError, WeightsUnavailableError
from tests.tiny_llm import LoopbackChatServer, save_tiny_causal_lm, tiny_model_reply

MESSAGES = [
    {"role": "system", "content": "describe the common concept of these images in one short answer"},
    {"role": "user", "content": "red dog ; blue car ; red bird"},
]
KEY = "sk-test-0123456789abcdef"  # a fake key: only ever in the environment of a test


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_causal_lm(tmp_path_factory.mktemp("tiny-llm"))


@pytest.fixture(scope="module")
def tiny_reply(tiny_dir: Path):
    return tiny_model_reply(tiny_dir)


@pytest.fixture
def server():
    with LoopbackChatServer() as srv:
        yield srv


def openai_backend(srv: LoopbackChatServer | str, **fields) -> OpenAISummarizer:
    base_url = srv if isinstance(srv, str) else srv.base_url
    config = OpenAIConfig(**{"model": "tiny-chat", "base_url": base_url, "api_key_env": None, "backoff": 0.01,
                             **fields})
    return OpenAISummarizer(config, BackendContext())


# ---- the OpenAI-compatible backend ------------------------------------------------------------------------


def test_openai_answers_from_the_tiny_model_over_loopback(tiny_reply) -> None:
    with LoopbackChatServer(tiny_reply) as srv:
        backend = openai_backend(srv, max_tokens=7)
        answer = backend.chat(MESSAGES, temperature=0.3, seed=11)
        assert isinstance(answer, str) and answer.strip()
        assert answer == tiny_reply(MESSAGES)  # what the model said, not post-processed
        [body] = srv.requests
    assert body["model"] == "tiny-chat" and body["messages"] == MESSAGES
    assert body["temperature"] == 0.3 and body["seed"] == 11 and body["max_tokens"] == 7
    assert srv.seen_authorization == ["Bearer none"]  # api_key_env: null sends a placeholder, no key


def test_openai_identity_has_the_server_and_no_limits_or_key_name(server: LoopbackChatServer) -> None:
    url = f"http://user:secret@127.0.0.1:{server.port}/v1?token=abc"
    backend = openai_backend(url, api_key_env=None, timeout=5, retries=1, concurrency=3)
    identity = backend.identity
    assert (identity.kind, identity.model, identity.revision) == ("openai", "tiny-chat", None)
    assert identity.params == {"base_url": server.base_url, "max_tokens": 32}
    assert "secret" not in backend.where and "token" not in backend.where
    default = OpenAIConfig(model="gpt-4o-mini")  # the OpenAI API
    assert default.parameters() == {"base_url": None, "max_tokens": 32}
    limits = openai_backend(server, timeout=5, retries=1, backoff=0.5, concurrency=3).limits
    assert (limits.timeout, limits.retries, limits.backoff, limits.concurrency) == (5, 1, 0.5, 3)


def test_openai_sends_the_key_from_the_named_variable_and_keeps_it_nowhere(
        server: LoopbackChatServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISCOVER_TEST_LLM_KEY", KEY)
    backend = openai_backend(server, api_key_env="DISCOVER_TEST_LLM_KEY", retries=0)
    assert backend.chat(MESSAGES, temperature=0.0, seed=0)
    assert server.seen_authorization == [f"Bearer {KEY}"]
    written = [str(backend.identity.as_dict()), str(backend.config.stored()), backend.config.model_dump_json(),
               repr(backend.config), backend.where]
    assert not any(KEY in text for text in written)
    server.mode, server.error_message = "bad_request", f"Incorrect API key provided: {KEY}"
    with pytest.raises(BackendError) as caught:
        backend.chat(MESSAGES, temperature=0.0, seed=0)
    assert KEY not in str(caught.value) and "***" in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_openai_missing_key_variable_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DISCOVER_TEST_NO_SUCH_KEY", raising=False)
    with pytest.raises(ConfigError, match="DISCOVER_TEST_NO_SUCH_KEY"):
        openai_backend("http://127.0.0.1:9/v1", api_key_env="DISCOVER_TEST_NO_SUCH_KEY")


@pytest.mark.parametrize("value", [KEY, "sk_live_abcdef", "Bearer abc.def", "", "sk-proj-Ab12"])
def test_openai_rejects_a_key_in_api_key_env(value: str) -> None:
    with pytest.raises(ValidationError) as caught:
        OpenAIConfig(model="gpt-4o-mini", api_key_env=value)
    text = str(caught.value)
    assert "environment variable" in text and "api_key_env" in text
    assert not value or value not in text  # pydantic must not echo the key back


def test_openai_retries_server_errors_then_fails(server: LoopbackChatServer) -> None:
    server.mode = "error"
    backend = openai_backend(server, retries=3)
    with pytest.raises(BackendError, match="failed after 4 attempts") as caught:
        backend.chat(MESSAGES, temperature=0.3, seed=1)
    assert len(server.requests) == 1 + 3
    assert server.base_url in str(caught.value) and "tiny-chat" in str(caught.value)


def test_openai_rides_out_a_flaky_server(server: LoopbackChatServer) -> None:
    server.fail_first = 2
    answer = openai_backend(server, retries=3).chat(MESSAGES, temperature=0.3, seed=1)
    assert answer == "echo: red dog ; blue car ; red bird"
    assert len(server.requests) == 3


def test_openai_does_not_retry_a_bad_request(server: LoopbackChatServer) -> None:
    server.mode = "bad_request"
    with pytest.raises(BackendError, match="BadRequestError"):
        openai_backend(server, retries=3).chat(MESSAGES, temperature=0.3, seed=1)
    assert len(server.requests) == 1


@pytest.mark.parametrize("content_type, body", [
    ("text/html", b"<html>502 Bad Gateway</html>"),  # the client returns this text instead of raising
    ("application/json", b"not json {"),  # the client raises json.JSONDecodeError, not an openai error
    ("application/json", b'{"object": "error"}'),
    ("application/json", b"[1, 2]"),
    ("application/json", b'{"choices": "x"}'),
])
def test_openai_garbage_is_a_backend_error(server: LoopbackChatServer, content_type: str, body: bytes) -> None:
    server.mode, server.garbage_content_type, server.garbage_body = "garbage", content_type, body
    with pytest.raises(BackendError, match=server.base_url):
        openai_backend(server).chat(MESSAGES, temperature=0.3, seed=1)
    assert len(server.requests) == 1  # a malformed answer is not retried


@pytest.mark.parametrize("mode, message", [("empty", "no choices"), ("null", "no content")])
def test_openai_reply_without_text_is_a_backend_error(server: LoopbackChatServer, mode: str, message: str) -> None:
    server.mode = mode
    with pytest.raises(BackendError, match=message):
        openai_backend(server).chat(MESSAGES, temperature=0.3, seed=1)


def test_openai_server_down_fails_fast() -> None:
    srv = LoopbackChatServer()
    srv.stop()
    backend = openai_backend(srv, retries=2)
    start = time.monotonic()
    with pytest.raises(BackendError, match="failed after 3 attempts"):
        backend.chat(MESSAGES, temperature=0.3, seed=1)
    assert time.monotonic() - start < 3


def test_openai_slow_server_times_out(server: LoopbackChatServer) -> None:
    server.mode, server.slow_seconds = "slow", 10
    backend = openai_backend(server, timeout=0.5, retries=1)
    start = time.monotonic()
    with pytest.raises(BackendError, match="failed after 2 attempts"):
        backend.chat(MESSAGES, temperature=0.3, seed=1)
    assert time.monotonic() - start < 3
    assert len(server.requests) == 2


def test_openai_concurrency_is_bounded(server: LoopbackChatServer) -> None:
    server.delay = 0.1
    backend = openai_backend(server, concurrency=2)
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: backend.chat([{"role": "user", "content": f"n{i}"}], temperature=0.3, seed=i),
                                range(8)))
    assert answers == [f"echo: n{i}" for i in range(8)]
    assert server.max_in_flight == 2  # overlapped, and never more than the limit


# ---- call limits --------------------------------------------------------------------------------------------


def test_with_retries_backs_off_exponentially_with_a_cap() -> None:
    waits: list[float] = []
    limits = CallLimits(retries=6, backoff=1.0, max_backoff=8.0)
    assert backoff_waits(limits) == [1, 2, 4, 8, 8, 8]

    def always() -> None:
        raise ConnectionError("refused")

    with pytest.raises(BackendError, match="fetching: failed after 7 attempts: refused"):
        with_retries(always, limits, retry_on=(ConnectionError,), what="fetching", sleep=waits.append)
    assert waits == [1, 2, 4, 8, 8, 8]


def test_with_retries_returns_after_a_recovery_and_passes_other_errors_through() -> None:
    waits: list[float] = []
    calls = iter([ConnectionError("a"), ConnectionError("b"), "done"])

    def flaky() -> str:
        outcome = next(calls)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    assert with_retries(flaky, CallLimits(), retry_on=(ConnectionError,), what="x", sleep=waits.append) == "done"
    assert waits == [1.0, 2.0]

    def broken() -> None:
        raise KeyError("not retried")

    with pytest.raises(KeyError):
        with_retries(broken, CallLimits(), retry_on=(ConnectionError,), what="x", sleep=waits.append)
    assert waits == [1.0, 2.0]


def test_call_limits_validate() -> None:
    assert CallLimits() == CallLimits(timeout=60, retries=3, backoff=1.0, concurrency=8)
    for bad in ({"timeout": 0}, {"retries": -1}, {"backoff": -1}, {"concurrency": 0}):
        with pytest.raises(ValueError):
            CallLimits(**bad)


def test_call_budget() -> None:
    budget = CallBudget(3, what="LLM calls")
    budget.spend()
    budget.spend(2)
    assert budget.used == 3 and budget.remaining == 0
    with pytest.raises(BudgetExhausted, match="budget of 3 LLM calls is spent") as caught:
        budget.spend()
    assert isinstance(caught.value, BackendError) and budget.used == 3
    assert CallBudget(None).remaining is None

    shared, spent = CallBudget(500), []

    def spend_many() -> None:
        for _ in range(100):
            try:
                shared.spend()
                spent.append(1)
            except BudgetExhausted:
                pass

    threads = [threading.Thread(target=spend_many) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert shared.used == len(spent) == 500


def test_concurrency_slots_are_shared_by_name() -> None:
    inside = threading.Event()
    with concurrency_slot("test-slot", 1):
        def other() -> None:
            with concurrency_slot("test-slot", 1):
                inside.set()

        thread = threading.Thread(target=other)
        thread.start()
        assert not inside.wait(0.1)  # the one slot is held here
    thread.join(2)
    assert inside.is_set()
    with pytest.raises(ValueError):
        with concurrency_slot("test-slot", 0):
            pass


# ---- the transformers backend -------------------------------------------------------------------------------


def test_transformers_chat_is_seeded_and_leaves_the_global_rng_alone(tiny_dir: Path) -> None:
    backend = TransformersSummarizer(TransformersChatConfig(model=str(tiny_dir), max_new_tokens=12), BackendContext())
    state = torch.get_rng_state()
    first = backend.chat(MESSAGES, temperature=1.0, seed=5)
    assert first == backend.chat(MESSAGES, temperature=1.0, seed=5)
    assert first != backend.chat(MESSAGES, temperature=1.0, seed=6)
    assert torch.equal(state, torch.get_rng_state())
    greedy = backend.chat(MESSAGES, temperature=0.0, seed=0)
    assert greedy.strip() and greedy == backend.chat(MESSAGES, temperature=0.0, seed=99)
    with ThreadPoolExecutor(4) as pool:  # the lock keeps concurrent calls correct
        assert set(pool.map(lambda _: backend.chat(MESSAGES, temperature=1.0, seed=5), range(4))) == {first}
    identity = backend.identity
    assert (identity.kind, identity.model, identity.revision) == ("transformers", str(tiny_dir), None)
    assert identity.params == {"max_new_tokens": 12, "dtype": "float32"}
    half = TransformersSummarizer(TransformersChatConfig(model=str(tiny_dir), dtype="float16"), BackendContext())
    assert half.identity.params["dtype"] == "float32"  # float16 on a CPU runs (and is cached) as float32


def test_transformers_hub_id_offline_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError, match="discover-ray-tests/no-such-chat-model") as caught:
        TransformersSummarizer(TransformersChatConfig(model="discover-ray-tests/no-such-chat-model"), BackendContext())
    assert time.monotonic() - start < 5
    assert "local directory" in str(caught.value)


def test_transformers_needs_a_chat_template(tiny_dir: Path, tmp_path: Path) -> None:
    plain = Path(shutil.copytree(tiny_dir, tmp_path / "plain"))
    (plain / "chat_template.jinja").unlink()
    with pytest.raises(BackendError, match="chat template"):
        TransformersSummarizer(TransformersChatConfig(model=str(plain)), BackendContext())
