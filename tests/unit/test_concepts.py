from __future__ import annotations

import pytest

from discover_ray.concepts import ConceptSet, builtin, builtin_names, clean_concepts, load_concepts, superclass_members


def test_cleaning_strips_drops_blanks_and_keeps_first_duplicate():
    concepts, report = clean_concepts(["  dog", "cat ", "", "dog", "   ", "bird", "cat"])
    assert concepts == ("dog", "cat", "bird")
    assert report.blank_lines == (3, 5)
    assert report.duplicates == ((4, "dog"), (7, "cat"))
    assert "dropped 2 blank line(s)" in report.summary() and "'dog' (line 4)" in report.summary()


def test_file_with_crlf_and_bare_cr_line_endings(tmp_path):
    path = tmp_path / "words.txt"
    path.write_bytes(b"red\r\ngreen\rblue\n\nred\n")
    concept_set = load_concepts(str(path))
    assert concept_set.concepts == ("red", "green", "blue")
    assert concept_set.name == "words"
    assert concept_set.report.duplicates == ((5, "red"),)


def test_content_id_depends_on_content_and_order_only(tmp_path):
    a = tmp_path / "a.txt"
    b = tmp_path / "b.txt"
    a.write_text("x\ny\n")
    b.write_text("x\n\ny\nx\n")
    assert load_concepts(str(a)).id == load_concepts(str(b)).id
    assert ConceptSet("s", ("y", "x")).id != load_concepts(str(a)).id
    assert len(load_concepts(str(a)).id) == 16


def test_missing_and_empty_files_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="one concept per line"):
        load_concepts(str(tmp_path / "nope.txt"))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(ValueError, match="holds no concepts"):
        load_concepts(str(empty))


def test_builtin_sets_follow_dataset_label_order():
    assert builtin_names() == ("cifar10", "cifar100", "cifar100_superclasses")
    assert builtin("cifar10").concepts[3] == "cat"
    cifar100 = builtin("cifar100").concepts
    assert len(cifar100) == 100 and len(set(cifar100)) == 100
    # Known CIFAR-100 fine labels.
    assert (cifar100[0], cifar100[1], cifar100[48], cifar100[58], cifar100[90], cifar100[99]) == (
        "apple", "aquarium fish", "motorcycle", "pickup truck", "train", "worm",
    )  # fmt: skip
    members = superclass_members()
    assert len(members) == 20 and sorted(c for m in members.values() for c in m) == sorted(cifar100)
    assert load_concepts("cifar10").id == builtin("cifar10").id


def test_index_of_names_every_missing_concept():
    s = builtin("cifar10")
    assert s.index_of(["cat", "dog"]) == [3, 5]
    with pytest.raises(KeyError, match="lacks 2 concept"):
        s.index_of(["cat", "unicorn", "dragon"])


def test_concept_set_refuses_duplicates_and_emptiness():
    with pytest.raises(ValueError, match="duplicates"):
        ConceptSet("x", ("a", "a"))
    with pytest.raises(ValueError, match="empty"):
        ConceptSet("x", ())
