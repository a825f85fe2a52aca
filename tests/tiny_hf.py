"""Tiny random Hugging Face models built in-process (no download, < 1 MB, well under a second each), saved with
``save_pretrained`` so tests drive the production loaders with a local directory, as users without network do.

- ``tiny_tokenizer``: a WordLevel tokenizer trained on the given words, BERT-style ([CLS] text [SEP]).
- ``save_tiny_blip``: a BLIP captioner (model + processor). Its weights are initialised with a large spread
  (``initializer_range=1.0``): with BLIP's defaults (vision 1e-10, text 0.02) a random BLIP gives the same caption
  for every image, and tests of batching need captions that depend on the image.
- ``save_tiny_sd``: a Stable Diffusion pipeline (UNet, VAE, CLIP text encoder, a character-level CLIP tokenizer,
  DPM-Solver multistep with SD's betas). Its VAE downsamples by 2, so ``size`` 32 means 16² latents.

Heavy imports are inside the functions, so collecting a test module that imports this stays cheap.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pytest
    from transformers import PreTrainedTokenizerFast

__all__ = ["BLIP_WORDS", "CLOSED_ENDPOINT", "TEXT_POSITIONS", "hub_resolves", "isolated_hub", "save_tiny_blip",
           "save_tiny_sd", "single_torch_thread", "tiny_tokenizer"]

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
BLIP_WORDS = "a an the photo picture of with and on in red green blue yellow dog cat car tree house sky bird".split()
TEXT_POSITIONS = 32  # the tiny text encoders' position count: the tokenizers' model_max_length


def tiny_tokenizer(words: list[str], model_max_length: int = TEXT_POSITIONS) -> PreTrainedTokenizerFast:
    """A lower-casing, whitespace-splitting WordLevel tokenizer over ``words`` plus [PAD] [UNK] [CLS] [SEP] [MASK]
    (ids 0–4), that wraps text as ``[CLS] text [SEP]``. ``model_max_length`` must be the text encoder's position
    count (the default 1e30 makes max-length padding overflow)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.train_from_iterator([" ".join(words)], trainers.WordLevelTrainer(special_tokens=SPECIAL_TOKENS))
    cls, sep = backend.token_to_id("[CLS]"), backend.token_to_id("[SEP]")
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, model_max_length=model_max_length, pad_token="[PAD]", unk_token="[UNK]",
        cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
    )


def save_tiny_blip(folder: str | Path, image_size: int = 32, seed: int = 0) -> Path:
    """A random BLIP captioner (``BlipForConditionalGeneration`` + ``BlipProcessor``) saved in ``folder``."""
    import torch
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    folder = Path(folder)
    tokenizer = tiny_tokenizer(BLIP_WORDS)
    ids = {"bos_token_id": tokenizer.cls_token_id, "sep_token_id": tokenizer.sep_token_id,
           "pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.sep_token_id}
    config = BlipConfig(
        text_config={"vocab_size": len(tokenizer), "hidden_size": 16, "encoder_hidden_size": 16,
                     "intermediate_size": 32, "projection_dim": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                     "max_position_embeddings": TEXT_POSITIONS, "initializer_range": 1.0, **ids},
        vision_config={"hidden_size": 16, "intermediate_size": 32, "projection_dim": 16, "num_hidden_layers": 1,
                       "num_attention_heads": 2, "image_size": image_size, "patch_size": 8, "initializer_range": 1.0},
        projection_dim=16, image_text_hidden_size=16,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = BlipForConditionalGeneration(config).eval()
    processor = BlipProcessor(BlipImageProcessor(size={"height": image_size, "width": image_size}), tokenizer)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def _clip_tokenizer(model_max_length: int):  # -> CLIPTokenizer
    """A character-level CLIP tokenizer (byte-level BPE without merges): every lower-case letter, digit and a little
    punctuation, alone and word-final (``x</w>``); any other character is <|endoftext|>, as in CLIP."""
    from transformers import CLIPTokenizer

    chars = "abcdefghijklmnopqrstuvwxyz0123456789,.'-"
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        vocab.update({c + suffix: len(vocab) + i for i, c in enumerate(chars)})
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=model_max_length)


def save_tiny_sd(folder: str | Path, image_size: int = 32, seed: int = 0) -> Path:
    """A random ``StableDiffusionPipeline`` (no safety checker) saved in ``folder``; it draws ``image_size``²
    images by default (any even size works)."""
    import torch
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    folder = Path(folder)
    tokenizer = _clip_tokenizer(TEXT_POSITIONS)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=TEXT_POSITIONS, projection_dim=32, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        ))
        unet = UNet2DConditionModel(
            sample_size=image_size // 2, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=32, norm_num_groups=4, attention_head_dim=4,
        )
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16), norm_num_groups=4,
            down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
            sample_size=image_size,
        )
    scheduler = DPMSolverMultistepScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                            steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(folder)
    return folder


CLOSED_ENDPOINT = "http://127.0.0.1:9"  # the discard port, closed: a connection is refused at once


def isolated_hub(monkeypatch: pytest.MonkeyPatch, cache: Path, *, offline: bool, endpoint: str | None = None) -> None:
    """An empty Hugging Face cache (so a model a developer has cached is not found), and the hub marked offline
    (``HF_HUB_OFFLINE=1``) or not marked at all; ``endpoint`` replaces the hub's address (``CLOSED_ENDPOINT``: a
    machine without network, simulated on any machine). huggingface_hub reads its environment when imported, so
    its constants are patched too."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    if endpoint is not None:
        monkeypatch.setattr(constants, "ENDPOINT", endpoint)


def hub_resolves(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """Whether ``host`` has an address here (in a thread: a resolver may hang longer than any timeout)."""
    found: list[bool] = []

    def resolve() -> None:
        try:
            found.append(bool(socket.getaddrinfo(host, 443)))
        except OSError:
            found.append(False)

    worker = threading.Thread(target=resolve, daemon=True)
    worker.start()
    worker.join(timeout)
    return bool(found and found[0])


@contextmanager
def single_torch_thread() -> Iterator[None]:
    """torch on one intra-op thread for a while. The tiny models' operators are so small that, on a 2-core
    machine that is busy with other processes, torch's worker threads spend their time waiting for each other:
    measured 0.02 s → 0.3–3 s per 2-image call with 2 threads under load, 0.08 s with 1."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
