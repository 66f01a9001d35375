"""The small files beside the store that the registry and the build cache rewrite (docker's
config.json, the blob-location ledger, the build caches): each goes through the one atomic write,
keeps its mode, and leaves no temporary file behind when the rename fails."""

from __future__ import annotations

import contextlib
import resource
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from modelyard.builder.cache import FileDigestCache, SummaryCache
from modelyard.builder.compose import WeightsSummary
from modelyard.registry.credentials import Credentials, DockerConfig
from modelyard.registry.locations import LocationLedger

DIGEST = "sha256:" + "ab" * 32


@dataclass(frozen=True)
class Writer:
    id: str
    path: str  # relative to the folder the writer is given
    mode: int
    write: Callable[[Path], None]


def _file_digest(folder: Path) -> None:
    source = folder / "weights.gguf"
    source.write_bytes(b"gguf")
    FileDigestCache(folder).record(source, DIGEST)


WRITERS = [
    Writer(
        "docker-config",
        "config.json",
        0o600,
        lambda f: DockerConfig(f).save("reg:5000", Credentials("a", "b")),
    ),
    Writer(
        "blob-ledger",
        "registry-blobs.json",
        0o644,
        lambda f: LocationLedger(f / "registry-blobs.json").record("h", "ns/m", [DIGEST]),
    ),
    Writer("file-digest-cache", "files.json", 0o644, _file_digest),
    Writer(
        "summary-cache",
        f"weights/{DIGEST.removeprefix('sha256:')}.json",
        0o644,
        lambda f: SummaryCache(f).put(DIGEST, WeightsSummary("llama", "Q4_K_M", 1, "1")),
    ),
]


@pytest.mark.parametrize("writer", WRITERS, ids=[w.id for w in WRITERS])
def test_a_write_keeps_the_files_mode(tmp_path: Path, writer: Writer) -> None:
    writer.write(tmp_path)
    assert stat.S_IMODE((tmp_path / writer.path).stat().st_mode) == writer.mode
    assert _litter(tmp_path) == []


@pytest.mark.parametrize("writer", WRITERS, ids=[w.id for w in WRITERS])
def test_a_failed_write_leaves_the_old_file_and_no_temporary_one(tmp_path: Path, writer: Writer) -> None:
    writer.write(tmp_path)
    before = (tmp_path / writer.path).read_bytes()
    with _file_size_limit(16), pytest.raises(OSError):  # the disk is full, as far as writes go
        writer.write(tmp_path)
    assert (tmp_path / writer.path).read_bytes() == before
    assert _litter(tmp_path) == []


@contextlib.contextmanager
def _file_size_limit(limit: int) -> Iterator[None]:
    """Writes past `limit` bytes fail with EFBIG (Python ignores SIGXFSZ)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def _litter(folder: Path) -> list[str]:
    return sorted(
        str(p.relative_to(folder)) for p in folder.rglob("*") if p.name.endswith((".tmp", ".partial"))
    )
