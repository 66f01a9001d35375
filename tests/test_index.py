"""The pure index transitions: tagging, history, rollback, (de)serialisation."""

from __future__ import annotations

import json

import pytest

from modelyard.store.image import ANNOTATION_REF_NAME, ManifestFormatError
from modelyard.store.index import (
    Index,
    TagRecord,
    parse_index,
    remove_tag,
    render_index,
    rollback_target,
    set_tag,
)


def digest(n: int) -> str:
    return f"sha256:{n:064x}"


def rec(name: str, n: int, at: str = "t") -> TagRecord:
    return TagRecord(name=name, digest=digest(n), size=100, tagged_at=at)


def apply(steps: list[tuple[str, int]], limit: int = 20) -> Index:
    index = Index()
    for name, n in steps:
        index = set_tag(index, rec(name, n), limit)
    return index


@pytest.mark.parametrize(
    ("steps", "name", "current", "history", "limit"),
    [
        pytest.param([("a", 1)], "a", 1, [], 20, id="first-tag-no-history"),
        pytest.param([("a", 1), ("a", 2)], "a", 2, [1], 20, id="retag-pushes-history"),
        pytest.param([("a", 1), ("a", 2), ("a", 3)], "a", 3, [2, 1], 20, id="newest-history-first"),
        pytest.param([("a", 1), ("a", 1)], "a", 1, [], 20, id="same-digest-no-history"),
        pytest.param([("a", 1), ("a", 2), ("a", 1)], "a", 1, [2], 20, id="return-dedupes"),
        pytest.param([("a", 1), ("b", 9), ("a", 2)], "b", 9, [], 20, id="names-independent"),
        pytest.param([("a", i) for i in range(1, 8)], "a", 7, [6, 5, 4], 3, id="history-limit"),
        pytest.param([("a", 1), ("a", 2)], "a", 2, [], 0, id="history-disabled"),
    ],
)
def test_set_tag_history(
    steps: list[tuple[str, int]], name: str, current: int, history: list[int], limit: int
) -> None:
    index = apply(steps, limit)
    record = index.get(name)
    assert record is not None and record.digest == digest(current)
    assert [h.digest for h in index.history_of(name)] == [digest(n) for n in history]


@pytest.mark.parametrize(
    ("steps", "to", "expected", "error"),
    [
        pytest.param([("a", 1), ("a", 2)], None, 1, None, id="previous"),
        pytest.param([("a", 1), ("a", 2), ("a", 3)], digest(1), 1, None, id="explicit-digest"),
        pytest.param([("a", 1), ("a", 2), ("a", 3)], f"{1:064x}", 1, None, id="bare-hex"),
        pytest.param(
            [("a", 0x1F), ("a", 2)], "sha256:" + f"{0x1F:064x}"[:12], 0x1F, None, id="short-with-prefix"
        ),
        pytest.param([("a", 1), ("a", 2)], "", None, "needs a digest", id="empty"),
        pytest.param([("a", 1), ("a", 2)], "sha256:", None, "needs a digest", id="prefix-only"),
        pytest.param([("a", 1)], None, None, "no earlier digest", id="nothing-to-roll-back-to"),
        pytest.param([("a", 1), ("a", 2)], digest(7), None, "not in its history", id="unknown-digest"),
        pytest.param([("a", 1), ("a", 2)], digest(2), None, "already points at", id="the-current-digest"),
        pytest.param([("a", 0x10), ("a", 0x11), ("a", 0x12)], "0", None, "ambiguous", id="ambiguous-prefix"),
    ],
)
def test_rollback_target(
    steps: list[tuple[str, int]], to: str | None, expected: int | None, error: str | None
) -> None:
    index = apply(steps)
    if error:
        with pytest.raises(LookupError, match=error):
            rollback_target(index, "a", to)
    else:
        assert rollback_target(index, "a", to).digest == digest(expected or 0)


def test_rollback_then_roll_forward_keeps_both_digests() -> None:
    index = apply([("a", 1), ("a", 2)])
    target = rollback_target(index, "a")
    index = set_tag(index, TagRecord("a", target.digest, target.size, "later"), 20)
    assert index.get("a") == TagRecord("a", digest(1), 100, "later")
    assert [h.digest for h in index.history_of("a")] == [digest(2)]


def test_remove_tag_forgets_history_and_keeps_others() -> None:
    index = remove_tag(apply([("a", 1), ("a", 2), ("b", 3)]), "a")
    assert index.get("a") is None and index.history_of("a") == []
    assert index.get("b") is not None
    assert {r.digest for r in (*index.tags, *index.history)} == {digest(3)}


def test_render_parse_round_trip_and_oci_shape() -> None:
    index = apply([("library/m:latest", 1), ("library/m:latest", 2), ("team/x:v1", 3)])
    raw = render_index(index)
    value = json.loads(raw)
    assert value["schemaVersion"] == 2
    assert value["mediaType"] == "application/vnd.oci.image.index.v1+json"
    names = [m["annotations"].get("org.opencontainers.image.ref.name") for m in value["manifests"]]
    assert names.count("library/m:latest") == 1, "history entries carry no ref.name: tools see one tag"
    assert parse_index(value) == index
    assert render_index(parse_index(value)) == raw


@pytest.mark.parametrize(
    "value",
    [
        pytest.param([], id="not-an-object"),
        pytest.param({"manifests": {}}, id="manifests-not-a-list"),
        pytest.param({"manifests": [{"digest": "sha256:zz", "size": 1}]}, id="bad-digest"),
        pytest.param({"manifests": [{"digest": digest(1), "size": -1}]}, id="negative-size"),
        pytest.param({"manifests": ["x"]}, id="entry-not-object"),
    ],
)
def test_parse_index_rejects_garbage(value: object) -> None:
    with pytest.raises(ManifestFormatError):
        parse_index(value)


def test_other_tools_entries_that_no_reference_names_are_kept_as_written() -> None:
    nameless = {"mediaType": "x", "digest": digest(1), "size": 3}
    bad_name = {"mediaType": "x", "digest": digest(2), "size": 3, "annotations": {ANNOTATION_REF_NAME: "a b"}}
    index = parse_index({"manifests": [nameless, bad_name]})
    assert index.tags == () and index.foreign == (nameless, bad_name)
    index = remove_tag(
        set_tag(index, TagRecord("library/m:latest", digest(3), 5, "t"), 20), "library/m:latest"
    )
    assert json.loads(render_index(index))["manifests"] == [nameless, bad_name]


@pytest.mark.parametrize(
    ("written", "canonical"),
    [
        pytest.param("foo", "library/foo:latest", id="bare-name"),
        pytest.param("MyModel", "library/mymodel:latest", id="upper-case"),
        pytest.param("team/m:v1", "team/m:v1", id="namespaced"),
        pytest.param("library/m:latest", "library/m:latest", id="ours"),
    ],
)
def test_names_other_tools_wrote_are_read_canonical_and_written_back_as_they_were(
    written: str, canonical: str
) -> None:
    entry = {"mediaType": "x", "digest": digest(1), "size": 3, "annotations": {ANNOTATION_REF_NAME: written}}
    index = parse_index({"manifests": [entry]})
    [record] = index.tags
    assert record.name == canonical
    index = set_tag(index, TagRecord("library/other:latest", digest(2), 5, "t"), 20)
    names = [e["annotations"][ANNOTATION_REF_NAME] for e in json.loads(render_index(index))["manifests"]]
    assert written in names  # the other tool still finds its entry after our write


def test_a_second_spelling_of_a_name_is_kept_but_not_addressed() -> None:
    """`Foo` and `foo` are one name to us: the first is the tag, the second is kept as written."""
    entries = [
        {"mediaType": "x", "digest": digest(n), "size": 3, "annotations": {ANNOTATION_REF_NAME: name}}
        for n, name in ((1, "Foo"), (2, "foo"))
    ]
    index = parse_index({"manifests": entries})
    assert [(t.name, t.digest) for t in index.tags] == [("library/foo:latest", digest(1))]
    assert index.foreign == (entries[1],)
