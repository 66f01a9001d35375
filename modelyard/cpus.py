"""How many threads llama.cpp's CPU backend should run: one per physical core this process may use.

`os.cpu_count()` counts every CPU of the machine. Three things make that too many:
- SMT: a core's second hardware thread shares its memory bandwidth, which token generation is bound
  by; llama.cpp's own default (common_cpu_get_num_math) counts physical cores, one per set of
  `thread_siblings`, and so does Ollama.
- An affinity mask (`taskset`, `docker run --cpuset-cpus`, Kubernetes' static CPU manager): the
  process runs on those CPUs only.
- A CFS quota (`docker run --cpus=2`, a Kubernetes CPU limit): the process gets that many CPUs'
  time, however many it runs on. llama.cpp's threads wait for each other at every op, so one
  throttled thread holds all the others: 64 threads under a 2-CPU quota crawl.

The decision is pure (`usable_cores`); `cpu_facts` reads what it needs from /proc and /sys, and
leaves a fact unknown (None) where the system does not say (macOS, no cgroup file).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CpuFacts:
    allowed: frozenset[int]  # the CPUs this process may run on
    siblings: Mapping[int, str]  # a CPU's thread_siblings mask: one value per physical core
    quota_cpus: float | None  # the CFS quota, in CPUs' time (quota / period); None: no limit


def usable_cores(facts: CpuFacts) -> int:
    """Physical cores among the allowed CPUs (a CPU whose siblings are unknown counts alone),
    no more than the quota rounded up; at least one."""
    cores = {facts.siblings.get(cpu, f"cpu{cpu}") for cpu in facts.allowed}
    count = len(cores)
    if facts.quota_cpus is not None:
        count = min(count, math.ceil(facts.quota_cpus))
    return max(count, 1)


def quota_cpus(
    cpu_max: str | None = None, cfs_quota_us: str | None = None, cfs_period_us: str | None = None
) -> float | None:
    """The CPUs' time a cgroup's quota gives: cgroup v2's `cpu.max` ("200000 100000", or "max
    100000" for none) or v1's cfs_quota_us (-1 for none) over cfs_period_us. None when there is
    none or the text is not a quota."""
    if cpu_max is not None:
        quota, _, period = cpu_max.strip().partition(" ")
    elif cfs_quota_us is not None and cfs_period_us is not None:
        quota, period = cfs_quota_us.strip(), cfs_period_us.strip()
    else:
        return None
    if not (quota.isdigit() and period.isdigit()) or int(period) == 0 or int(quota) == 0:
        return None
    return int(quota) / int(period)


def tightest_quota(quotas: Iterable[float | None]) -> float | None:
    """The smallest of the quotas along a cgroup's path (a parent's limits its children)."""
    known = [q for q in quotas if q is not None]
    return min(known) if known else None


# --- reading the system -----------------------------------------------------------------------


def cpu_facts(sys_root: Path = Path("/sys"), proc_self: Path = Path("/proc/self")) -> CpuFacts:
    try:
        allowed = frozenset(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS has no affinity call
        allowed = frozenset(range(os.cpu_count() or 1))
    siblings: dict[int, str] = {}
    for cpu in allowed:
        text = _read(sys_root / f"devices/system/cpu/cpu{cpu}/topology/thread_siblings")
        if text is not None:
            siblings[cpu] = text.strip()
    return CpuFacts(allowed, siblings, _cgroup_quota(sys_root / "fs/cgroup", proc_self / "cgroup"))


def _cgroup_quota(root: Path, membership: Path) -> float | None:
    """The tightest CFS quota on this process's cgroup path, in cgroup v2 or v1, whichever says."""
    text = _read(membership)
    if text is None:
        return None
    quotas: list[float | None] = []
    for line in text.splitlines():
        if line.count(":") < 2:
            continue
        _, controllers, path = line.split(":", 2)
        relative = path.strip().lstrip("/")
        if controllers == "":  # cgroup v2 (under `unified` where v1 holds the controllers)
            top = root if (root / "cgroup.controllers").exists() else root / "unified"
            quotas += [quota_cpus(cpu_max=_read(f / "cpu.max")) for f in _up_to(top, top / relative)]
        elif "cpu" in controllers.split(","):
            names = (controllers, "cpu", "cpu,cpuacct")
            top = next((root / name for name in names if (root / name).is_dir()), root / "cpu")
            quotas += [
                quota_cpus(
                    cfs_quota_us=_read(f / "cpu.cfs_quota_us"), cfs_period_us=_read(f / "cpu.cfs_period_us")
                )
                for f in _up_to(top, top / relative)
            ]
    return tightest_quota(quotas)


def _up_to(top: Path, folder: Path) -> list[Path]:
    """`folder` and its parents up to `top`, those that exist (a cgroup namespace shows its own
    cgroup as the root: the path /proc names may not exist under the mount)."""
    chain = [folder, *folder.parents]
    within = [f for f in chain[: chain.index(top) + 1] if f.is_dir()] if top in chain else []
    return within or ([top] if top.is_dir() else [])


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None
