"""Times shown to users (`list`'s MODIFIED, `ps`'s UNTIL, `/v1/models`' created) are right in any
local time zone, daylight saving time included: the store's and the server's times are UTC."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from modelyard.cli import _ago
from modelyard.cli_serving import _until
from modelyard.server.openai_api import created

# Southern summer (daylight saving in Sydney and Santiago) and northern winter, on the day of writing.
ZONES = ["UTC", "Australia/Sydney", "America/Santiago", "America/New_York", "Asia/Kolkata"]


@pytest.fixture(params=ZONES)
def zone(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("TZ", request.param)
    time.tzset()
    yield request.param
    monkeypatch.undo()
    time.tzset()


def utc(moment: datetime, fraction: bool = False) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ" if fraction else "%Y-%m-%dT%H:%M:%SZ")


@pytest.mark.parametrize(
    ("age", "shown"),
    [
        (timedelta(seconds=5), "just now"),
        (timedelta(minutes=3, seconds=5), "3 minutes ago"),
        (timedelta(hours=2, minutes=1), "2 hours ago"),
        (timedelta(days=3, minutes=1), "3 days ago"),
    ],
)
def test_modified_ago(zone: str, age: timedelta, shown: str) -> None:
    assert _ago(utc(datetime.now(UTC) - age)) == shown


@pytest.mark.parametrize(
    ("left", "shown"),
    [
        (timedelta(minutes=29, seconds=30), "29 minutes from now"),
        (timedelta(seconds=90, milliseconds=500), "90 seconds from now"),
        (timedelta(seconds=-5), "Stopping..."),
    ],
)
def test_until(zone: str, left: timedelta, shown: str) -> None:
    moment = datetime.now(UTC) + left
    assert _until(utc(moment, fraction=True)) == shown
    # Ollama's form: the local time with its offset.
    assert _until(moment.astimezone().isoformat()) == shown


def test_until_forever_and_unreadable() -> None:
    assert _until("9999-12-31T23:59:59Z") == "Forever"
    assert _until("soon") == "soon"


def test_openai_created(zone: str) -> None:
    assert created("2026-11-27T04:55:21Z") == 1795755321
    assert created("not a time") == 0
