"""A summariser that asks an OpenAI-compatible chat-completions server (OpenAI itself, or vLLM, Ollama,
llama.cpp serving a local instruct model on the cluster).

The API key is read from an environment variable the config *names* (``api_key_env``), so it is never in a
config file, a run record or a cache key; it is not logged and is blanked from every error message. The
client's own retries are off (``max_retries=0``): ``with_retries`` retries connection errors, timeouts,
rate limits and 5xx answers with backoff, so the attempts are counted and bounded by the config.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator

from discover_ray.backends.base import BackendConfig, BackendContext, BackendError, Summarizer, register_backend
from discover_ray.backends.limits import CallLimits, concurrency_slot, with_retries
from discover_ray.config_files import sanitize_url
from discover_ray.errors import ConfigError

__all__ = ["OPENAI_API", "OpenAIConfig", "OpenAISummarizer"]

OPENAI_API = "https://api.openai.com/v1"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NOT_RESULT = {"timeout", "retries", "backoff", "concurrency", "api_key_env"}


class OpenAIConfig(BackendConfig):
    """``backends.summarizer`` with ``kind: openai``."""

    # A mistaken key in api_key_env must not be echoed back by pydantic's error text.
    model_config = ConfigDict(hide_input_in_errors=True)

    kind: Literal["openai"] = "openai"
    model: str = Field(min_length=1)  # e.g. gpt-4o-mini, or the name a vLLM server serves its model under
    revision: str | None = None
    base_url: str | None = None  # None: the OpenAI API
    api_key_env: str | None = "OPENAI_API_KEY"  # the NAME of the variable holding the key; None: send no key
    max_tokens: int = Field(default=32, ge=1)
    timeout: float = Field(default=60.0, gt=0)
    retries: int = Field(default=3, ge=0)
    backoff: float = Field(default=1.0, ge=0)
    concurrency: int = Field(default=8, ge=1)

    @field_validator("api_key_env")
    @classmethod
    def _a_name_not_a_key(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not _ENV_NAME.fullmatch(value) or value.lower().startswith(("sk-", "sk_")):
            raise ValueError(
                "api_key_env is the name of the environment variable that holds the API key, not the key "
                "itself (this looks like a key); put the key in an environment variable, e.g. "
                "`export OPENAI_API_KEY=...`, and give its name here (api_key_env: OPENAI_API_KEY)"
            )
        return value

    @field_validator("base_url")
    @classmethod
    def _a_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("base_url must be an http:// or https:// URL, e.g. http://vllm:8000/v1")
        return value

    def limits(self) -> CallLimits:
        return CallLimits(timeout=self.timeout, retries=self.retries, backoff=self.backoff,
                          concurrency=self.concurrency)

    def parameters(self) -> dict[str, Any]:
        """What changes a reply: max_tokens and the server (a different server may serve another model under
        the same name), stored without user-info or query; not the limits and never the key's variable."""
        params = self.model_dump(mode="json", exclude={"kind", "model", "revision", *_NOT_RESULT})
        if params.get("base_url") is not None:
            params["base_url"] = sanitize_url(params["base_url"])
        return params


_RETRY_NAMES = ("APIConnectionError", "APITimeoutError", "RateLimitError", "InternalServerError")


@register_backend
class OpenAISummarizer(Summarizer):
    """Chat replies from an OpenAI-compatible server."""

    kind = "openai"
    Config = OpenAIConfig
    config: OpenAIConfig

    def __init__(self, config: OpenAIConfig, context: BackendContext):
        super().__init__(config, context)
        import openai

        self._openai = openai
        self._key: str | None = None
        if config.api_key_env is not None:
            key = os.environ.get(config.api_key_env)
            if not key:
                raise ConfigError(
                    f"backends.summarizer (openai): the environment variable {config.api_key_env} (api_key_env) "
                    "is not set; set it to the API key, or set api_key_env: null for a server that needs no key"
                )
            self._key = key
        # Passed explicitly, so OPENAI_BASE_URL in the environment cannot redirect calls behind the identity.
        base_url = config.base_url or OPENAI_API
        self.server = sanitize_url(base_url)
        self.where = f"openai chat at {self.server} (model {config.model})"
        self.limits = config.limits()
        self._slot = f"openai:{self.server}"
        self._retry_on = tuple(getattr(openai, name) for name in _RETRY_NAMES)
        try:
            self._client = openai.OpenAI(base_url=base_url, api_key=self._key or "none",
                                         timeout=config.timeout, max_retries=0)
        except openai.OpenAIError as err:
            raise ConfigError(f"{self.where}: cannot make a client: {self._redact(str(err))}") from None

    def _redact(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text

    def chat(self, messages: Sequence[dict[str, str]], *, temperature: float, seed: int) -> str:
        """The reply's text, as the server sent it (not stripped: the caller post-processes)."""
        sent = [dict(m) for m in messages]

        def attempt() -> Any:
            with concurrency_slot(self._slot, self.limits.concurrency):
                return self._client.chat.completions.create(
                    model=self.config.model, messages=sent, temperature=temperature, seed=seed,
                    max_tokens=self.config.max_tokens,
                )

        try:
            reply = with_retries(attempt, self.limits, retry_on=self._retry_on, what=self.where)
        except BackendError as err:
            raise BackendError(self._redact(str(err))) from None
        except self._openai.OpenAIError as err:  # 4xx, a reply that is not the API's shape
            raise BackendError(f"{self.where}: {type(err).__name__}: {self._redact(str(err))}") from None
        except ValueError as err:  # a body declared JSON that does not parse
            raise BackendError(f"{self.where}: the server's answer is not valid JSON ({err})") from None
        return self._content(reply)

    def _content(self, reply: Any) -> str:
        # The client does not validate a 200's body: text that is not JSON comes back as a str, JSON of another
        # shape as a list or a ChatCompletion with fields missing or of the wrong type.
        if isinstance(reply, str):
            raise BackendError(f"{self.where}: the server answered with text, not a chat completion "
                               f"(is base_url the API's /v1 address?): {reply[:80]!r}")
        choices = getattr(reply, "choices", None)
        if choices is not None and not isinstance(choices, list):
            raise BackendError(f"{self.where}: the server's answer is not a chat completion: {str(reply)[:80]!r}")
        if not choices:
            raise BackendError(f"{self.where}: the server's reply has no choices")
        message = getattr(choices[0], "message", None)
        content = getattr(message, "content", None)
        if not isinstance(content, str) or not content:
            refusal = getattr(message, "refusal", None)
            why = f" (refusal: {refusal})" if isinstance(refusal, str) and refusal else ""
            raise BackendError(f"{self.where}: the server's reply has no content{why}")
        return content
