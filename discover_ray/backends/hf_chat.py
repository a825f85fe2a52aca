"""A summariser that runs a local instruct model with transformers, in the worker's own process.

For clusters without an LLM server: the model (a local directory, or a hub id already in the cache; see
``backends.hub``, which fails fast offline with a message saying how to give a local directory) is loaded
once when the backend is built; each reply is generated from the model's own chat template. Sampling is
seeded by the call's seed inside a forked RNG, so a reply depends on its seed only and the process's global
random state is left as it was.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

from pydantic import Field

from discover_ray.backends.base import (
    BackendContext,
    BackendError,
    BackendIdentity,
    Summarizer,
    register_backend,
)
from discover_ray.backends.hub import HubModelConfig, dtype_name, load_pretrained, torch_dtype

__all__ = ["TransformersChatConfig", "TransformersSummarizer"]


class TransformersChatConfig(HubModelConfig):
    """``backends.summarizer`` with ``kind: transformers``."""

    what: ClassVar[str] = "summariser model"

    kind: Literal["transformers"] = "transformers"
    model: str = Field(min_length=1)  # a local directory or a hub id of an instruct (chat) model
    revision: str | None = None
    max_new_tokens: int = Field(default=32, ge=1)
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"


@register_backend
class TransformersSummarizer(Summarizer):
    """Chat replies from a causal LM run with ``generate``."""

    kind = "transformers"
    Config = TransformersChatConfig
    config: TransformersChatConfig

    def __init__(self, config: TransformersChatConfig, context: BackendContext):
        super().__init__(config, context)
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self._torch = torch
        self.tokenizer = load_pretrained(AutoTokenizer, config.model, config.revision, "summariser model")
        if getattr(self.tokenizer, "chat_template", None) is None:
            raise BackendError(
                f"the summariser model {config.model} has no chat template: use an instruct (chat) model"
            )
        self.dtype = torch_dtype(config.dtype, context.device)  # float16 on a CPU runs in float32
        model = load_pretrained(AutoModelForCausalLM, config.model, config.revision, "summariser model",
                                dtype=self.dtype)
        try:
            self.model = model.to(context.device).eval()
        except (RuntimeError, AssertionError) as err:
            raise BackendError(
                f"the summariser model {config.model} cannot be put on {context.device}: {err}"
            ) from None
        self.device = torch.device(context.device)
        self._lock = threading.Lock()  # generate is not thread-safe (and a second copy would double the memory)

    @property
    def identity(self) -> BackendIdentity:
        """With the dtype the model really runs in, so float32 replies are never cached under a float16 key."""
        params = {**self.config.parameters(), "dtype": dtype_name(self.dtype)}
        return BackendIdentity(self.kind, self.config.model, self.config.revision, params)

    def _prompt(self, messages: Sequence[dict[str, str]]) -> dict[str, Any]:
        encoded = self.tokenizer.apply_chat_template(
            [dict(m) for m in messages], add_generation_prompt=True, return_tensors="pt", return_dict=True,
        )
        if not hasattr(encoded, "keys"):  # an older tokenizer API: the ids tensor alone
            encoded = {"input_ids": encoded}
        inputs = {k: v.to(self.device) for k, v in encoded.items() if k in ("input_ids", "attention_mask")}
        if "attention_mask" not in inputs:
            inputs["attention_mask"] = self._torch.ones_like(inputs["input_ids"])
        return inputs

    def chat(self, messages: Sequence[dict[str, str]], *, temperature: float, seed: int) -> str:
        """The model's reply to ``messages``: greedy at temperature 0, else sampled with ``seed``."""
        torch = self._torch
        try:
            inputs = self._prompt(messages)
        except Exception as err:  # a template that rejects these roles, a conversation that is empty
            raise BackendError(f"summariser {self.config.model}: cannot apply the chat template: {err}") from None
        options: dict[str, Any] = {"max_new_tokens": self.config.max_new_tokens, "do_sample": temperature > 0}
        if temperature > 0:
            options["temperature"] = float(temperature)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        if pad is not None:
            options["pad_token_id"] = pad
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        try:
            with self._lock, torch.random.fork_rng(devices=devices), torch.inference_mode():
                torch.manual_seed(seed)
                output = self.model.generate(**inputs, **options)
        except Exception as err:
            raise BackendError(
                f"summariser {self.config.model}: generation failed: {type(err).__name__}: {err}"
            ) from None
        new_tokens = output[0, inputs["input_ids"].shape[1]:]
        return self.tokenizer.decode(new_tokens, skip_special_tokens=True)
