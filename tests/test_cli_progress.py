"""What a long build or transfer prints when stderr is no terminal (CI logs, pipes): a line per
status, and for each transfer its start, quarters and end, never a line per chunk."""

from __future__ import annotations

import pytest

from modelyard.cli import plain_progress
from modelyard.progress import ProgressEvent

MB = 1_000_000
A = "sha256:" + "a" * 64
B = "sha256:" + "b" * 64


def chunks(status: str, digest: str, total: int, step: int) -> list[ProgressEvent]:
    return [
        ProgressEvent(status, digest=digest, total=total, completed=min(done, total))
        for done in range(0, total + step, step)
    ]


@pytest.mark.parametrize(
    ("events", "lines"),
    [
        pytest.param(
            [ProgressEvent("pulling manifest"), ProgressEvent("pulling manifest"), ProgressEvent("success")],
            ["pulling manifest", "success"],
            id="each-status-once",
        ),
        pytest.param(
            chunks("pulling aaaaaaaaaaaa", A, 200 * MB, MB),
            [
                "pulling aaaaaaaaaaaa: 0 B of 200.0 MB",
                "pulling aaaaaaaaaaaa: 50.0 MB of 200.0 MB",
                "pulling aaaaaaaaaaaa: 100.0 MB of 200.0 MB",
                "pulling aaaaaaaaaaaa: 150.0 MB of 200.0 MB",
                "pulling aaaaaaaaaaaa: 200.0 MB of 200.0 MB",
            ],
            id="a-transfer-by-quarters",
        ),
        pytest.param(
            [
                *chunks("pulling aaaaaaaaaaaa", A, 80 * MB, 30 * MB)[:2],
                *chunks("pulling bbbbbbbbbbbb", B, 10, 10),
                *chunks("pulling aaaaaaaaaaaa", A, 80 * MB, 30 * MB)[2:],
            ],
            [
                "pulling aaaaaaaaaaaa: 0 B of 80.0 MB",
                "pulling aaaaaaaaaaaa: 30.0 MB of 80.0 MB",
                "pulling bbbbbbbbbbbb: 10 B of 10 B",  # small: only its end
                "pulling aaaaaaaaaaaa: 60.0 MB of 80.0 MB",
                "pulling aaaaaaaaaaaa: 80.0 MB of 80.0 MB",
            ],
            id="parallel-transfers-each-their-own",
        ),
        pytest.param(
            [ProgressEvent("copying model file", total=0, completed=0), ProgressEvent("writing manifest")],
            ["copying model file", "writing manifest"],
            id="an-empty-copy-is-a-status",
        ),
    ],
)
def test_plain_progress(events: list[ProgressEvent], lines: list[str]) -> None:
    said: list[str] = []
    sink = plain_progress(said.append)
    for event in events:
        sink(event)
    assert said == lines
