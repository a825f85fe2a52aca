"""Describe-and-Dissect's language step: simplify each caption, summarise them into candidate concepts.

The prompts follow the paper's (methods.md §4.2) in our own wording: a one-shot simplification of each
caption to a 1–5 word concept, then N summaries of the shuffled simplified captions (two-shot), each asking
for ONE label that covers most of them. Post-processing is ours where the reference code is fragile
(§4.4): the text after the first ':' is kept and stripped; a reply with commas is asked again (zero-shot) to
merge its pieces into one label; captions are always joined with ", ". Candidates are lower-cased, lose a
trailing '.', gain "<candidate> background" when their last word is design/graphic, and are de-duplicated
in first-seen order (the reference's set makes the order, and so the tie-breaking, random).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

__all__ = [
    "BACKGROUND_WORDS", "Chat", "after_colon", "candidates_from", "clean_candidate", "merge_messages", "simplify_messages",
    "stable_unique", "summarise_captions", "summary_messages",
]

#: ``chat(messages, seed)`` → the reply text
Chat = Callable[[list[dict[str, str]], int], str]

SYSTEM = "You name what images have in common with short concept labels."

SIMPLIFY = ("Give one short concept label, 1 to 5 words, that simplifies this image description and leaves out "
            "unnecessary details. Answer with the label only.")
SIMPLIFY_EXAMPLE = ("a red background with a red background and a red background", "A red background")

SUMMARISE = ("Here are descriptions of several images, separated by commas. Give ONE coherent label of 1 to 5 words "
             "that summarises most of them (not necessarily all). Do not repeat the descriptions, and write no "
             "period and no quotes.")
SUMMARISE_EXAMPLES = (
    ("purple textured background, brown textured background, beige textured background, windmill",
     "multicolored textiles"),
    ("red tractor, toy car on a red ottoman, red dress, red camaro, red cable spool", "red-themed scenes"),
)
MERGE = "Summarise these comma-separated labels into one label of 1 to 5 words, with no commas: "

BACKGROUND_WORDS = frozenset({"design", "designs", "graphic", "graphics"})


def simplify_messages(caption: str) -> list[dict[str, str]]:
    shot, answer = SIMPLIFY_EXAMPLE
    return [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"{SIMPLIFY}\nDescription: {shot}"}, {"role": "assistant", "content": answer},
            {"role": "user", "content": f"{SIMPLIFY}\nDescription: {caption}"}]


def summary_messages(descriptions: Sequence[str]) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": SYSTEM}]
    for shot, answer in SUMMARISE_EXAMPLES:
        messages += [{"role": "user", "content": f"{SUMMARISE}\nDescriptions: {shot}"},
                     {"role": "assistant", "content": answer}]
    messages.append({"role": "user", "content": f"{SUMMARISE}\nDescriptions: {', '.join(descriptions)}"})
    return messages


def merge_messages(reply: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": MERGE + reply}]


def after_colon(reply: str) -> str:
    """The text after the first ':' (models like to answer "Label: red things"), stripped."""
    return reply.split(":", 1)[1].strip() if ":" in reply else reply.strip()


def clean_candidate(text: str) -> list[str]:
    """A reply or caption as candidate concepts: lower case, no surrounding quotes or trailing '.', and for a last
    word design/graphic also "<candidate> background" (the paper's rule for texture-like neurons)."""
    text = " ".join(text.strip().strip("\"'`").split()).lower()
    while text.endswith("."):
        text = text[:-1].rstrip()
    if not text:
        return []
    words = text.split()
    return [text, f"{text} background"] if words[-1] in BACKGROUND_WORDS else [text]


def stable_unique(items: Sequence[str]) -> list[str]:
    """Each item once, in first-seen order (deterministic tie-breaking downstream)."""
    return list(dict.fromkeys(items))


def summarise_captions(chat: Chat, captions: Sequence[str], *, summaries: int, rng: np.random.Generator,
                       seed: int) -> tuple[list[str], list[str]]:
    """(simplified captions, raw summaries): every non-empty caption simplified, then ``summaries`` summaries
    of the simplified captions, shuffled by ``rng`` before each, a reply with a comma merged by one more call.
    Simplifications are seeded by ``seed`` alone, so the same caption is simplified once for every unit."""
    simplified = []
    for caption in captions:
        if caption.strip():
            text = after_colon(chat(simplify_messages(caption.strip()), seed))
            if text:
                simplified.append(text)
    if not simplified:
        return [], []
    replies = []
    for i in range(summaries):
        order = list(simplified)
        rng.shuffle(order)
        reply = after_colon(chat(summary_messages(order), seed + 1 + i))
        if "," in reply:
            reply = after_colon(chat(merge_messages(reply), seed + 1 + i))
        replies.append(reply)
    return simplified, replies


def candidates_from(texts: Sequence[str]) -> list[str]:
    """Cleaned, expanded and de-duplicated candidate concepts from summaries (or, without summariser, captions)."""
    return stable_unique([c for text in texts for c in clean_candidate(text)])
