from __future__ import annotations

import pytest
import torch

from discover_ray.evaluate import concept_ranks, neuron_identification, paired_embedding_cosine, paired_text_cosine


def test_identification_accuracy_and_ranks():
    scores = torch.tensor(
        [
            [0.9, 0.1, 0.2, 0.0],  # truth 0 → rank 1
            [0.5, 0.4, 0.6, 0.0],  # truth 1 → rank 3
            [0.3, 0.3, 0.3, 0.3],  # truth 2, all tied → lowest index first → rank 3
            [0.0, 0.1, 0.2, 0.3],  # truth 3 → rank 1
        ]
    )
    result = neuron_identification(scores, [0, 1, 2, 3])
    assert result.ranks.tolist() == [1, 3, 3, 1]
    assert result.top1 == 0.5 and result.top5 == 1.0
    assert result.mean_rank == 2.0
    assert result.median_rank == 3  # sorted(ranks)[K // 2]
    assert result.as_dict()["units"] == 4


def test_identification_by_class_name_within_a_concept_set():
    from discover_ray.concepts import ConceptSet

    concepts = ConceptSet("words", ("cat", "dog", "car", "tree"))
    scores = torch.tensor([[0.1, 0.9, 0.0, 0.0], [0.0, 0.2, 0.8, 0.1]])
    result = neuron_identification(scores, ["dog", "car"], concepts=concepts)
    assert result.top1 == 1.0
    with pytest.raises(KeyError, match="lacks 1 concept"):
        neuron_identification(scores, ["dog", "unicorn"], concepts=concepts)
    with pytest.raises(ValueError, match="3 concept columns but the concept set has 4"):
        neuron_identification(scores[:, :3], ["dog", "car"], concepts=concepts)


def test_ranks_validate_their_input():
    with pytest.raises(ValueError, match="one true concept per unit"):
        concept_ranks(torch.zeros(3, 4), [0, 1])
    with pytest.raises(ValueError, match=r"lie in \[0, 4\)"):
        concept_ranks(torch.zeros(2, 4), [0, 4])


class BagOfLetters:
    """A transparent text encoder: letter counts."""

    def encode_text(self, texts):
        out = torch.zeros(len(texts), 26)
        for i, text in enumerate(texts):
            for ch in text.lower():
                if ch.isalpha():
                    out[i, ord(ch) - 97] += 1
        return out


def test_paired_cosine_uses_matched_pairs_only():
    encoder = BagOfLetters()
    assert paired_text_cosine(["cat", "dog"], ["cat", "dog"], encoder) == pytest.approx(1.0)
    # Swapping the pairs changes the paired score (an all-pairs average would not change).
    swapped = paired_text_cosine(["dog", "cat"], ["cat", "dog"], encoder)
    assert swapped == pytest.approx(0.0)
    with pytest.raises(ValueError, match="2 predictions but 1"):
        paired_text_cosine(["a", "b"], ["a"], encoder)


def test_paired_cosine_over_one_embedded_concept_set():
    emb = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]]).numpy()
    assert paired_embedding_cosine(emb, [0, 1], [0, 1]) == pytest.approx(1.0)
    assert paired_embedding_cosine(emb, [1, 0], [0, 1]) == pytest.approx(0.0)  # swapped pairs: 0, not the all-pairs mean
    assert paired_embedding_cosine(emb, [2], [0]) == pytest.approx(2**-0.5)
    with pytest.raises(ValueError, match="2 predictions for 1"):
        paired_embedding_cosine(emb, [0, 1], [0])


def test_paired_cosine_with_the_clip_text_tower():
    from discover_ray.encoders.clip import ClipEncoder, ClipSpec

    encoder = ClipEncoder(ClipSpec("TinyCLIP-ViT-32"))
    same = paired_text_cosine(["a red circle", "a blue square"], ["a red circle", "a blue square"], encoder)
    assert same == pytest.approx(1.0, abs=1e-6)
    different = paired_text_cosine(["a red circle"], ["the ocean at night"], encoder)
    assert different < 0.999


def test_sentence_encoder_fails_clearly_without_its_package_or_weights():
    from discover_ray.evaluate.sentence import SentenceEncoder

    try:
        import sentence_transformers  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"pip install 'discover-ray\[text\]'"):
            SentenceEncoder()
    else:  # installed but offline without cached weights
        with pytest.raises(RuntimeError, match="weights are not available"):
            SentenceEncoder("sentence-transformers/all-mpnet-base-v2-not-cached")
