"""The threads llama.cpp runs: physical cores this process may use, within its CFS quota. The
decision in tables; the reading of /proc and /sys over folders laid out as each cgroup version
lays them out (a test cannot make cgroups: benchmarks/bench_threads.py runs under real ones)."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelyard.cpus import CpuFacts, cpu_facts, quota_cpus, tightest_quota, usable_cores

SMT = {0: "03", 1: "03", 2: "0c", 3: "0c"}  # two cores of two hardware threads each


@pytest.mark.parametrize(
    ("facts", "expected"),
    [
        pytest.param(CpuFacts(frozenset(range(4)), SMT, None), 2, id="smt-one-per-core"),
        pytest.param(CpuFacts(frozenset({0, 2}), SMT, None), 2, id="one-thread-of-each-core"),
        pytest.param(CpuFacts(frozenset({0, 1}), SMT, None), 1, id="both-threads-of-one-core"),
        pytest.param(CpuFacts(frozenset(range(4)), {}, None), 4, id="siblings-unknown-each-alone"),
        pytest.param(CpuFacts(frozenset(range(64)), {}, 2.0), 2, id="a-quota-of-two"),
        pytest.param(CpuFacts(frozenset(range(64)), {}, 1.5), 2, id="a-quota-rounded-up"),
        pytest.param(CpuFacts(frozenset(range(64)), {}, 0.1), 1, id="a-tenth-still-one"),
        pytest.param(CpuFacts(frozenset(range(4)), SMT, 8.0), 2, id="a-quota-above-the-cores"),
    ],
)
def test_usable_cores(facts: CpuFacts, expected: int) -> None:
    assert usable_cores(facts) == expected


@pytest.mark.parametrize(
    ("texts", "expected"),
    [
        pytest.param({"cpu_max": "200000 100000\n"}, 2.0, id="v2"),
        pytest.param({"cpu_max": "max 100000\n"}, None, id="v2-none"),
        pytest.param({"cfs_quota_us": "150000\n", "cfs_period_us": "100000\n"}, 1.5, id="v1"),
        pytest.param({"cfs_quota_us": "-1\n", "cfs_period_us": "100000\n"}, None, id="v1-none"),
        pytest.param({"cfs_quota_us": "150000"}, None, id="v1-no-period"),
        pytest.param({"cpu_max": "50000 0"}, None, id="no-period-is-no-quota"),
        pytest.param({"cpu_max": "garbage"}, None, id="not-a-quota"),
        pytest.param({}, None, id="no-file"),
    ],
)
def test_quota_cpus(texts: dict[str, str], expected: float | None) -> None:
    assert quota_cpus(**texts) == expected


def test_the_tightest_quota_along_the_path_wins() -> None:
    assert tightest_quota([None, 4.0, 2.5, None]) == 2.5
    assert tightest_quota([None, None]) is None


def _sys(tmp_path: Path, siblings: dict[int, str]) -> Path:
    root = tmp_path / "sys"
    for cpu, mask in siblings.items():
        topology = root / f"devices/system/cpu/cpu{cpu}/topology"
        topology.mkdir(parents=True)
        (topology / "thread_siblings").write_text(mask + "\n")
    return root


def _proc(tmp_path: Path, cgroup: str) -> Path:
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "cgroup").write_text(cgroup)
    return proc


def test_cgroup_v2_quotas_are_read_along_the_path(tmp_path: Path) -> None:
    root = _sys(tmp_path, {})
    top = root / "fs/cgroup"
    (top / "kubepods/pod1/ctr").mkdir(parents=True)
    (top / "cgroup.controllers").write_text("cpu memory\n")
    (top / "kubepods/pod1/cpu.max").write_text("300000 100000\n")
    (top / "kubepods/pod1/ctr/cpu.max").write_text("max 100000\n")
    facts = cpu_facts(root, _proc(tmp_path, "0::/kubepods/pod1/ctr\n"))
    assert facts.quota_cpus == 3.0, "the pod's limit holds its container"


def test_cgroup_v1_in_a_container_reads_its_own_cgroup_at_the_mount(tmp_path: Path) -> None:
    """Docker without a cgroup namespace: /proc names the host's path, the mount is the container's."""
    root = _sys(tmp_path, {})
    mount = root / "fs/cgroup/cpu,cpuacct"
    mount.mkdir(parents=True)
    (mount / "cpu.cfs_quota_us").write_text("200000\n")
    (mount / "cpu.cfs_period_us").write_text("100000\n")
    facts = cpu_facts(root, _proc(tmp_path, "5:cpu,cpuacct:/docker/0123abcd\n4:memory:/docker/0123abcd\n"))
    assert facts.quota_cpus == 2.0


def test_a_hybrid_hierarchy_reads_v1_s_cpu_controller(tmp_path: Path) -> None:
    root = _sys(tmp_path, {})
    (root / "fs/cgroup/unified").mkdir(parents=True)
    (root / "fs/cgroup/cpu/job").mkdir(parents=True)
    (root / "fs/cgroup/cpu/job/cpu.cfs_quota_us").write_text("100000\n")
    (root / "fs/cgroup/cpu/job/cpu.cfs_period_us").write_text("100000\n")
    facts = cpu_facts(root, _proc(tmp_path, "1:cpu:/job\n0::/\n"))
    assert facts.quota_cpus == 1.0


def test_no_cgroup_file_no_quota_and_this_machines_cpus(tmp_path: Path) -> None:
    import os

    facts = cpu_facts(_sys(tmp_path, {cpu: f"{cpu}" for cpu in os.sched_getaffinity(0)}), tmp_path / "none")
    assert facts.quota_cpus is None
    assert facts.allowed == frozenset(os.sched_getaffinity(0))
    assert usable_cores(facts) == len(os.sched_getaffinity(0))
