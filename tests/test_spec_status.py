"""The ModelSet's SourceReady condition (pure), table-driven."""

from __future__ import annotations

import pytest

from modelyard.spec.status import Condition, source_condition

_SEEN = Condition("SourceReady", True, "Read", "revision r1 is in force", 100.0, 1)


@pytest.mark.parametrize(
    ("error", "rejected", "read", "previous", "expected", "since"),
    [
        (None, None, True, None, (True, "Read", "revision r2 is in force"), 200.0),
        (None, None, True, _SEEN, (True, "Read", "revision r2 is in force"), 100.0),  # held: time kept
        ("git fetch failed", None, True, _SEEN, (False, "ReadFailed", "git fetch failed; the last"), 200.0),
        (None, "r3", True, _SEEN, (False, "Rejected", "revision r3 is not valid"), 200.0),
        ("unreadable", "r3", True, None, (False, "ReadFailed", "unreadable"), 200.0),  # the read first
        (None, None, False, None, (False, "Reading", "first read is under way"), 200.0),
        (None, "r3", False, None, (False, "Reading", "first read is under way"), 200.0),  # restarted
    ],
)
def test_source_condition(
    error: str | None,
    rejected: str | None,
    read: bool,
    previous: Condition | None,
    expected: tuple[bool, str, str],
    since: float,
) -> None:
    found = source_condition(
        previous, error=error, rejected=rejected, revision="r2", read=read, generation=2, now=200.0
    )
    status, reason, message = expected
    assert (found.type, found.status, found.reason, found.observed_generation) == (
        "SourceReady",
        status,
        reason,
        2,
    )
    assert message in found.message and found.last_transition_time == since


@pytest.mark.parametrize(
    ("error", "rejected", "revision", "says"),
    [
        ("git fetch failed", None, "r2", "git fetch failed; the last good spec stays in force"),
        ("git fetch failed", None, "", "git fetch failed; no spec is in force until one is read"),
        (None, "r3", "r2", "revision r3 is not valid (see rejected); the last good spec stays in force"),
        (None, "r3", "", "revision r3 is not valid (see rejected); no spec is in force until one is read"),
    ],
)
def test_a_source_that_fails_says_whether_a_spec_stays_in_force(
    error: str | None, rejected: str | None, revision: str, says: str
) -> None:
    """A README review: a source never read said "the last good spec stays in force" beside
    status's "no spec in force"."""
    found = source_condition(
        None, error=error, rejected=rejected, revision=revision, read=True, generation=0, now=1.0
    )
    assert found.message == says
