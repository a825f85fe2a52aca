"""Describe-and-Dissect's language step: the prompts and every post-processing rule."""

from __future__ import annotations

import numpy as np

from discover_ray.describe.prompts import (
    after_colon,
    candidates_from,
    clean_candidate,
    merge_messages,
    simplify_messages,
    stable_unique,
    summarise_captions,
    summary_messages,
)


def test_the_colon_rule_keeps_the_text_after_the_first_colon_stripped():
    assert after_colon("Label: red things") == "red things"
    assert after_colon("Concept: a: b ") == "a: b"  # after the FIRST colon, not between the first and second
    assert after_colon("  no colon here \n") == "no colon here"


def test_candidates_are_lowercased_stripped_of_quotes_and_trailing_periods():
    assert clean_candidate('  "Red Tractors." ') == ["red tractors"]
    assert clean_candidate("Striped   Textures...") == ["striped textures"]
    assert clean_candidate("   ") == []


def test_a_design_or_graphic_candidate_also_gets_its_background_form():
    for word in ("design", "designs", "graphic", "graphics"):
        assert clean_candidate(f"Floral {word}") == [f"floral {word}", f"floral {word} background"]
    assert clean_candidate("graphic novels") == ["graphic novels"]  # only the LAST word counts


def test_deduplication_is_stable_first_seen_order():
    assert stable_unique(["b", "a", "b", "c", "a"]) == ["b", "a", "c"]
    assert candidates_from(["Dogs.", "cats", "dogs", "Wave design"]) == ["dogs", "cats", "wave design",
                                                                          "wave design background"]


def test_prompts_are_one_shot_two_shot_and_zero_shot_and_join_with_comma_space():
    simplify = simplify_messages("a photo of a dog on grass")
    assert [m["role"] for m in simplify] == ["system", "user", "assistant", "user"]
    assert simplify[-1]["content"].endswith("a photo of a dog on grass")
    summary = summary_messages(["dogs", "dogs", "grass"])
    assert [m["role"] for m in summary] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert summary[-1]["content"].endswith("dogs, dogs, grass")  # duplicates are joined like the rest (§4.4)
    assert summary[2]["content"] == "multicolored textiles" and summary[4]["content"] == "red-themed scenes"
    merge = merge_messages("red cars, red dresses")
    assert [m["role"] for m in merge] == ["system", "user"] and merge[-1]["content"].endswith("red cars, red dresses")


class ScriptedChat:
    """A chat that answers by rule and records what it was asked."""

    def __init__(self, summary_reply: str = "Label: red objects", merge_reply: str = "red things"):
        self.summary_reply, self.merge_reply = summary_reply, merge_reply
        self.calls: list[tuple[list[dict[str, str]], int]] = []

    def __call__(self, messages: list[dict[str, str]], seed: int) -> str:
        self.calls.append((messages, seed))
        text = messages[-1]["content"]
        if text.startswith("Summarise these"):
            return self.merge_reply
        if "Descriptions:" in text:
            return self.summary_reply
        return "Simplified: " + text.rsplit("Description: ", 1)[1].split(" on ")[0]


def test_summarising_simplifies_each_caption_then_summarises_n_times_with_seeded_shuffles():
    chat = ScriptedChat()
    captions = ["a red car on a road", "", "a red dress on a chair", "a red apple on a table"]
    simplified, replies = summarise_captions(chat, captions, summaries=3, rng=np.random.default_rng(0), seed=7)
    assert simplified == ["a red car", "a red dress", "a red apple"]  # the empty caption is skipped
    assert replies == ["red objects"] * 3  # the ':' rule applied to each reply
    simplify_seeds = [seed for messages, seed in chat.calls[:3]]
    assert simplify_seeds == [7, 7, 7]  # one seed for every simplification: a caption is simplified once per run
    assert [seed for _, seed in chat.calls[3:]] == [8, 9, 10]
    orders = [m[-1]["content"].split("Descriptions: ")[1] for m, _ in chat.calls[3:]]
    again = ScriptedChat()
    summarise_captions(again, captions, summaries=3, rng=np.random.default_rng(0), seed=7)
    assert orders == [m[-1]["content"].split("Descriptions: ")[1] for m, _ in again.calls[3:]]  # seeded shuffles
    assert len(set(orders)) > 1  # and the order does change between summaries


def test_a_reply_with_commas_is_asked_again_to_merge_it_into_one_label():
    chat = ScriptedChat(summary_reply="red cars, red dresses", merge_reply="Answer: red clothing and cars")
    _, replies = summarise_captions(chat, ["a red car"], summaries=2, rng=np.random.default_rng(0), seed=0)
    assert replies == ["red clothing and cars"] * 2
    merges = [m for m, _ in chat.calls if m[-1]["content"].startswith("Summarise these")]
    assert len(merges) == 2 and merges[0][-1]["content"].endswith("red cars, red dresses")


def test_no_caption_means_no_summary_call():
    chat = ScriptedChat()
    assert summarise_captions(chat, ["", "  "], summaries=5, rng=np.random.default_rng(0), seed=0) == ([], [])
    assert chat.calls == []
