"""Live memory figures from /proc (Linux): a runner's RSS, how much of its mmapped weights is
resident, and how close the system is to swapping. Parsing is pure; reading is here too, small.
On other systems the readers return None and `ps` shows what it can."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

KIB = 1024


@dataclass(frozen=True)
class SystemMemory:
    total: int
    available: int  # what the kernel could hand out without swapping (MemAvailable)
    swap_total: int
    swap_used: int


@dataclass(frozen=True)
class ProcessMemory:
    rss: int
    weights_resident: int  # bytes of the weights file mapped and in RAM for this process


def parse_meminfo(text: str) -> SystemMemory:
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            values[key.strip()] = int(parts[0]) * (KIB if len(parts) > 1 and parts[1] == "kB" else 1)
    swap_total = values.get("SwapTotal", 0)
    return SystemMemory(
        total=values.get("MemTotal", 0),
        available=values.get("MemAvailable", values.get("MemFree", 0)),
        swap_total=swap_total,
        swap_used=swap_total - values.get("SwapFree", swap_total),
    )


def parse_rss(status_text: str) -> int:
    for line in status_text.splitlines():
        if line.startswith("VmRSS:"):
            parts = line.split()
            return int(parts[1]) * KIB
    return 0


def parse_mapped_rss(smaps_text: str, path: str) -> int:
    """Sum of `Rss` over the mappings of `path` (resolved, as the kernel names it) in a
    /proc/PID/smaps text, the file deleted since it was mapped too."""
    total = 0
    current = False
    names = (path, f"{path} (deleted)")
    for line in smaps_text.splitlines():
        fields = line.split()
        if fields and "-" in fields[0] and len(fields) >= 5 and ":" not in fields[0]:
            current = len(fields) >= 6 and " ".join(fields[5:]) in names
        elif current and line.startswith("Rss:"):
            total += int(fields[1]) * KIB
    return total


def system_memory() -> SystemMemory | None:
    try:
        return parse_meminfo(Path("/proc/meminfo").read_text())
    except OSError:
        return None


def process_memory(pid: int, weights: Path) -> ProcessMemory | None:
    try:
        rss = parse_rss(Path(f"/proc/{pid}/status").read_text())
        smaps = Path(f"/proc/{pid}/smaps").read_text()
    except OSError:
        return None
    # smaps names the file by its resolved path: a MODELYARD_HOME behind a link read 0 (a metrics
    # review).
    return ProcessMemory(rss=rss, weights_resident=parse_mapped_rss(smaps, os.path.realpath(weights)))
