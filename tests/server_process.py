"""`modelyard serve` as a real process for the end-to-end tests: a temporary home with the Gemma 3
270M sample image built in it, a free loopback port, and a stop that always reaps the process
group (the server and the runners it started)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from registry_server import free_port

from modelyard.builder.build import Builder
from modelyard.reference import parse_reference
from modelyard.store import Store

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
GEMMA_FILE = "gemma-3-270m-q4_k_m.gguf"
GEMMA = "gemma3"  # the name the sample image is built under


def build_gemma_home(home: Path, gemma_gguf: Path, name: str = GEMMA) -> Path:
    """A modelyard home holding samples/gemma3/Modelfile built as `name`. Returns the home."""
    context = home.parent / f"{home.name}-samples"
    shutil.copytree(SAMPLES / "gemma3", context, ignore=shutil.ignore_patterns("*.gguf"))
    os.symlink(gemma_gguf, context / GEMMA_FILE)
    store = Store(home / "store")
    store.init()
    Builder(store, home / "cache").build_file(context / "Modelfile", parse_reference(name))
    return home


@dataclass
class ServeProcess:
    home: Path
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    api_key: str | None = field(default=None, repr=False)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def client(self, timeout: float = 120) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers(), timeout=timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, grace_s: float = 20) -> None:
        """SIGTERM to the server (it stops its runners), then SIGKILL to the whole group."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(grace_s)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


def start_server(
    home: Path,
    *,
    env: Mapping[str, str] | None = None,
    api_key: str | None = None,
    timeout_s: float = 60,
    args: Sequence[str] = (),
) -> ServeProcess:
    """Start `modelyard serve` (with `args`) and wait until /health says 200."""
    port = free_port()
    log_path = home.parent / f"{home.name}-serve-{port}.log"
    environ = {
        **os.environ,
        "MODELYARD_HOME": str(home),
        "MODELYARD_HOST": f"127.0.0.1:{port}",
        "DOCKER_CONFIG": str(home / "docker"),
        **(env or {}),
    }
    environ.pop("MODELYARD_API_KEY", None)
    if api_key:
        environ["MODELYARD_API_KEY"] = api_key
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "modelyard.cli", "serve", "--host", f"127.0.0.1:{port}", *args],
            env=environ,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = ServeProcess(home, port, process, log_path, api_key)
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"modelyard serve exited ({process.returncode}):\n{server.log()}")
        try:
            if httpx.get(f"{server.url}/health", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"modelyard serve did not answer in {timeout_s} s:\n{server.log()}")
        time.sleep(0.1)
