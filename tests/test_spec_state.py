"""The reconciler's saved state: a round trip keeps everything, a file that is not a state file of
this version is set aside, and a bug while decoding raises instead of throwing the inventory away."""

from __future__ import annotations

import json
import math
import stat
from pathlib import Path
from typing import Any

import pytest
from spec_fakes import digest

from modelyard.errors import SpecIssue
from modelyard.spec import state
from modelyard.spec.plan import Applied, Failure, Inventory, Memory, Reason
from modelyard.spec.state import Event, Rejection, SavedState, ShelvedSpec, load_state, save_state
from modelyard.spec.status import Condition, ModelReport

FULL = SavedState(
    generation=3,
    spec={"apiVersion": "modelyard/v1", "kind": "ModelSet"},
    spec_digest="sha256:1234",
    revision="git:abc",
    inventory=Inventory(
        models={
            "chat": Memory(
                Applied(digest("a"), "lk", "ok", "sk", 2048, 2, math.inf, "s1"),
                Failure(Reason.CRASHED, "runner crashed", permanent=False),
                failures=2,
                retry_at=1_700_000_010.5,
                blocked_on="key",
            ),
            "idle": Memory(),
        },
        known_digests={"reg/chat:v1": digest("a")},
    ),
    reports={
        "chat": ModelReport(
            "chat", "reg/chat:v1", (Condition("Ready", True, "Loaded", "serving", 1_700_000_000.0, 3),), 3
        )
    },
    events=(
        Event(1_700_000_000.0, "chat", "loaded", "not loaded"),
        Event(1_700_000_001.0, "", "failed", "x", 3),
    ),
    rejected=Rejection(
        "typo", 1_700_000_001.0, (SpecIssue("spec.models[0].x", "unknown field", "m.yaml", 4),)
    ),
    shelved={"": ShelvedSpec({"apiVersion": "modelyard/v1", "kind": "ModelSet", "x": 1}, "applied")},
)


def test_a_saved_state_reads_back_the_same(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    save_state(path, FULL)
    assert load_state(path) == FULL
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]
    # A file from before events were counted (four fields an event) reads each as seen once.
    raw = json.loads(path.read_text())
    raw["events"] = [event[:4] for event in raw["events"]]
    path.write_text(json.dumps(raw))
    assert [e.count for e in load_state(path).events] == [1, 1]
    # A file from before specs were shelved has none.
    del raw["shelved"]
    path.write_text(json.dumps(raw))
    assert load_state(path).shelved == {}


def _saved(tmp_path: Path) -> dict[str, Any]:
    save_state(tmp_path / "state.json", FULL)
    raw: dict[str, Any] = json.loads((tmp_path / "state.json").read_text())
    return raw


def _set(raw: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    *parents, last = path.split(".")
    target = raw
    for key in parents:
        target = target[key]
    if value is _DELETE:
        del target[last]
    else:
        target[last] = value
    return raw


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value"),
    [
        pytest.param("version", 2, id="another-version"),
        pytest.param("generation", _DELETE, id="generation-missing"),
        pytest.param("generation", "3", id="generation-a-string"),
        pytest.param("models.chat", ["x"], id="model-a-list"),
        pytest.param("models.chat.applied.digest", _DELETE, id="applied-digest-missing"),
        pytest.param("models.chat.applied.keepAlive", [1], id="keep-alive-a-list"),
        pytest.param("models.chat.failure.reason", "Exploded", id="unknown-reason"),
        pytest.param("models.chat.retryAt", None, id="retry-at-null"),
        pytest.param("knownDigests", ["x"], id="known-digests-a-list"),
        pytest.param("reports.chat.conditions", [["Ready", True]], id="condition-short"),
        pytest.param("events", [[1.0, "chat", "loaded"]], id="event-short"),
        pytest.param("events", [[1.0, "chat", "loaded", "x", "3"]], id="event-count-a-string"),
        pytest.param("rejected.issues", [[1, 2, 3, 4]], id="issue-numbers"),
        pytest.param("shelved", {"": {"spec": {}}}, id="shelved-an-object"),
        pytest.param("shelved", [["", {}]], id="shelved-entry-a-list"),
        pytest.param("shelved", [{"source": "", "spec": "x"}], id="shelved-spec-a-string"),
        pytest.param("shelved", [{"source": 3, "spec": {}}], id="shelved-source-a-number"),
        pytest.param("shelved", [{"source": "", "spec": {}, "revision": 3}], id="shelved-revision-a-number"),
    ],
)
def test_a_file_of_another_shape_is_set_aside(tmp_path: Path, path: str, value: Any) -> None:
    raw = _set(_saved(tmp_path), path, value)
    (tmp_path / "state.json").write_text(json.dumps(raw))
    assert load_state(tmp_path / "state.json") == SavedState()
    assert json.loads((tmp_path / "state.json.corrupt").read_text()) == raw
    assert not (tmp_path / "state.json").exists()


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("{not json", id="not-json"),
        pytest.param("[1, 2]", id="a-list"),
        pytest.param("\udcff", id="not-utf8"),
    ],
)
def test_a_file_that_is_not_a_state_file_is_set_aside(
    tmp_path: Path, text: str, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "state.json").write_bytes(text.encode("utf-8", "surrogateescape"))
    assert load_state(tmp_path / "state.json") == SavedState()
    assert (tmp_path / "state.json.corrupt").exists()
    assert "set aside as state.json.corrupt" in caplog.text, "said (a reconcile audit: it was silent)"


@pytest.mark.parametrize("error", [KeyError, TypeError], ids=["key-error", "type-error"])
def test_a_bug_while_decoding_raises_and_keeps_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: type[Exception]
) -> None:
    save_state(tmp_path / "state.json", FULL)

    def broken(**_: object) -> Inventory:
        raise error("a bug in the decoder")

    monkeypatch.setattr(state, "Inventory", broken)
    with pytest.raises(error, match="a bug in the decoder"):
        load_state(tmp_path / "state.json")
    assert (tmp_path / "state.json").exists() and not (tmp_path / "state.json.corrupt").exists()
