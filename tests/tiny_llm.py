"""Test helpers for the summariser backends: a tiny causal LM with a chat template, saved as a local model
directory, and an OpenAI-compatible chat-completions server on loopback that can answer from it.

Real HTTP and the real ``openai`` client against ``LoopbackChatServer``, and a real forward pass of a tiny
random model: the production code paths, no network, no downloaded weights.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

__all__ = ["CHAT_TEMPLATE", "LoopbackChatServer", "save_tiny_causal_lm", "tiny_model_reply"]

SPECIAL = ["[PAD]", "[UNK]", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
WORDS = (
    "a the of and in on with is are this that these images image photo picture show shows common concept "
    "concepts neuron activates describe words word one short answer red green blue yellow black white dog "
    "cat bird car tree house water sky grass striped dotted round square small large animal vehicle"
).split()
CHAT_TEMPLATE = (
    "<s>{% for message in messages %}<|{{ message['role'] }}|> {{ message['content'] }} <|end|> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def save_tiny_causal_lm(folder: str | Path) -> Path:
    """A tiny random LlamaForCausalLM and its word-level tokenizer with a chat template, saved in ``folder``
    (made if absent). Deterministic: the same weights every time. Special tokens' output rows are zero, so
    greedy decoding picks ordinary words and a reply is never empty."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {token: i for i, token in enumerate([*SPECIAL, *WORDS])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.WordPiece()  # joins words with spaces
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="[UNK]", pad_token="[PAD]", bos_token="<s>", eos_token="</s>",
        additional_special_tokens=SPECIAL[4:], model_max_length=256,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    config = LlamaConfig(
        vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=256, pad_token_id=vocab["[PAD]"], bos_token_id=vocab["<s>"],
        eos_token_id=vocab["</s>"], tie_word_embeddings=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight[: len(SPECIAL)] = 0.0
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def tiny_model_reply(folder: str | Path) -> Callable[[list[dict[str, Any]]], str]:
    """A reply function for ``LoopbackChatServer`` that answers greedily from the tiny model in ``folder``
    through the production ``TransformersSummarizer``."""
    from discover_ray.backends.base import BackendContext
    from discover_ray.backends.hf_chat import TransformersChatConfig, TransformersSummarizer

    summarizer = TransformersSummarizer(TransformersChatConfig(model=str(folder), max_new_tokens=8), BackendContext())

    def reply(messages: list[dict[str, Any]]) -> str:
        return summarizer.chat(messages, temperature=0.0, seed=0)

    return reply


def echo_reply(messages: list[dict[str, Any]]) -> str:
    return f"echo: {messages[-1]['content']}" if messages else "echo"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def handle_error(self, request: Any, client_address: Any) -> None:  # a client that hung up: not a test failure
        pass


class LoopbackChatServer:
    """An OpenAI-compatible ``POST /v1/chat/completions`` endpoint on 127.0.0.1 (a free port), in threads.

    ``mode`` (settable at any time): ``ok`` answers with ``reply(messages)``; ``garbage`` a 200 whose body is
    not JSON (``garbage_body``, served as ``garbage_content_type``); ``empty`` a 200 with ``choices: []``;
    ``null`` a 200 whose message content is null; ``error`` an HTTP 500 saying ``error_message``;
    ``bad_request`` an HTTP 400; ``slow`` waits ``slow_seconds`` before answering (longer than a client's
    timeout). The first ``fail_first`` requests answer 500 whatever the mode (a flaky server).
    ``delay`` seconds are spent on every request (to overlap requests). What was received is kept:
    ``requests`` (the JSON bodies), ``seen_authorization`` (Authorization headers), ``max_in_flight``.
    """

    def __init__(self, reply: Callable[[list[dict[str, Any]]], str] = echo_reply, *, mode: str = "ok",
                 delay: float = 0.0, slow_seconds: float = 5.0, fail_first: int = 0,
                 garbage_content_type: str = "text/html",
                 garbage_body: bytes = b"<html><body>502 Bad Gateway (not JSON)</body></html>",
                 error_message: str = "loopback: scripted failure"):
        self.reply, self.mode, self.delay, self.slow_seconds = reply, mode, delay, slow_seconds
        self.fail_first, self.garbage_content_type, self.garbage_body = fail_first, garbage_content_type, garbage_body
        self.error_message = error_message
        self.requests: list[dict[str, Any]] = []
        self.seen_authorization: list[str | None] = []
        self.in_flight = self.max_in_flight = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server = _Server(("127.0.0.1", 0), self._handler())
        self.port = self._server.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"loopback-chat-{self.port}", daemon=True)
        self._thread.start()
        self._stopped = False

    def __enter__(self) -> LoopbackChatServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop listening (a later request is refused) and wake any slow request."""
        if self._stopped:
            return
        self._stopped = True
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _answer(self, body: dict[str, Any], number: int) -> tuple[int, str, bytes]:
        mode = "error" if number <= self.fail_first else self.mode
        if mode == "slow":
            self._stopping.wait(self.slow_seconds)
            mode = "ok"
        if mode in ("error", "bad_request"):
            status, kind = (500, "server_error") if mode == "error" else (400, "invalid_request_error")
            return status, "application/json", json.dumps({"error": {"message": self.error_message,
                                                                      "type": kind}}).encode()
        if mode == "garbage":
            return 200, self.garbage_content_type, self.garbage_body
        choices: list[dict[str, Any]] = []
        if mode in ("ok", "null"):
            content = self.reply(list(body.get("messages", []))) if mode == "ok" else None
            choices = [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop",
                        "logprobs": None}]
        elif mode != "empty":
            raise ValueError(f"unknown LoopbackChatServer mode {mode!r}")
        answer = {"id": f"chatcmpl-loopback-{number}", "object": "chat.completion", "created": int(time.time()),
                  "model": body.get("model", "loopback"), "choices": choices,
                  "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}}
        return 200, "application/json", json.dumps(answer).encode()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002  (quiet tests)
                pass

            def _send(self, status: int, content_type: str, data: bytes) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", content_type)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout)
                    pass

            def do_POST(self) -> None:
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._send(404, "application/json", b'{"error": {"message": "not found"}}')
                    return
                try:
                    body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                except ValueError:
                    self._send(400, "application/json", b'{"error": {"message": "the body is not JSON"}}')
                    return
                with server._lock:
                    server.requests.append(body)
                    server.seen_authorization.append(self.headers.get("Authorization"))
                    number = len(server.requests)
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    if server.delay:
                        time.sleep(server.delay)
                    try:
                        status, content_type, data = server._answer(body, number)
                    except Exception as err:  # a reply function that raised: the server's 500
                        status, content_type = 500, "application/json"
                        data = json.dumps({"error": {"message": f"loopback reply failed: {err}"}}).encode()
                finally:
                    with server._lock:
                        server.in_flight -= 1
                self._send(status, content_type, data)

        return Handler
