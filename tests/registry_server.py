"""Registries for the tests: the real CNCF Distribution (`docker-registry serve`), a TCP proxy
that counts (and can slow) the bytes between a client and it, and a tiny fake registry for what
Distribution will never do (serve bytes that don't match their digest, or a huge manifest).

Ports come from binding 127.0.0.1:0. Every process and thread started here is stopped by `stop()`.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REGISTRY_BINARY = "docker-registry"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def htpasswd_line(user: str, password: str) -> str:
    import bcrypt

    return f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode()}"


@dataclass
class Registry:
    host: str  # "127.0.0.1:PORT"
    root: Path  # filesystem storage
    process: subprocess.Popen[bytes]
    log_path: Path
    scheme: str = "http"
    user: str | None = None
    password: str | None = field(default=None, repr=False)

    def blob_data(self, digest: str) -> Path:
        hexdigest = digest.removeprefix("sha256:")
        return self.root / "docker/registry/v2/blobs/sha256" / hexdigest[:2] / hexdigest / "data"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_registry(
    workdir: Path,
    *,
    auth: tuple[str, str] | None = None,
    tls: tuple[Path, Path] | None = None,
) -> Registry:
    """A Distribution registry on a free loopback port, anonymous or with htpasswd users, HTTP or TLS."""
    if shutil.which(REGISTRY_BINARY) is None:
        raise RuntimeError("docker-registry is not installed (scripts/install-system-deps installs it)")
    workdir.mkdir(parents=True, exist_ok=True)
    root = workdir / "storage"
    port = free_port()
    http_section: dict[str, object] = {"addr": f"127.0.0.1:{port}", "secret": "modelyard-tests"}
    if tls is not None:
        http_section["tls"] = {"certificate": str(tls[0]), "key": str(tls[1])}
    config: dict[str, object] = {
        "version": 0.1,
        "log": {"level": "info", "accesslog": {"disabled": False}},
        "storage": {"filesystem": {"rootdirectory": str(root)}, "delete": {"enabled": True}},
        "http": http_section,
    }
    if auth is not None:
        htpasswd = workdir / "htpasswd"
        htpasswd.write_text(htpasswd_line(*auth) + "\n")
        config["auth"] = {"htpasswd": {"realm": "modelyard-tests", "path": str(htpasswd)}}
    config_path = workdir / "config.yml"
    config_path.write_text(json.dumps(config))  # JSON is YAML
    log_path = workdir / "registry.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [REGISTRY_BINARY, "serve", str(config_path)], stdout=log, stderr=subprocess.STDOUT, env=env
        )
    registry = Registry(
        f"127.0.0.1:{port}",
        root,
        process,
        log_path,
        scheme="https" if tls else "http",
        user=auth[0] if auth else None,
        password=auth[1] if auth else None,
    )
    _wait_until_up(registry)
    return registry


def _wait_until_up(registry: Registry, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    url = f"{registry.scheme}://{registry.host}/v2/"
    while time.monotonic() < deadline:
        if registry.process.poll() is not None:
            raise RuntimeError(f"the registry exited: {registry.log_path.read_text()[-2000:]}")
        try:
            if httpx.get(url, verify=False, timeout=1.0).status_code in (200, 401):
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    registry.stop()
    raise RuntimeError(f"the registry did not answer within {timeout_s}s")


# --- a counting, throttling TCP proxy --------------------------------------------------------------


class CountingProxy:
    """Forwards 127.0.0.1:<port> to a target port, counting bytes each way; `rate` (bytes/s), when
    set, slows the bytes flowing back to the client (to catch a download halfway)."""

    def __init__(self, target_port: int, *, rate: float | None = None) -> None:
        self.target_port = target_port
        self.rate = rate
        self.to_server = 0
        self.to_client = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._stopped = threading.Event()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def reset(self) -> None:
        with self._lock:
            self.to_server = self.to_client = 0

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target_port))
            with self._lock:
                self._sockets += [client, server]
            threading.Thread(target=self._pipe, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, False), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, upstream: bool) -> None:
        try:
            while data := source.recv(65536 if upstream or self.rate is None else 16384):
                if not upstream and self.rate is not None:
                    time.sleep(len(data) / self.rate)
                sink.sendall(data)
                with self._lock:
                    if upstream:
                        self.to_server += len(data)
                    else:
                        self.to_client += len(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        self._stopped.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread (close alone does not)
        self._listener.close()
        with self._lock:
            for s in self._sockets:
                s.close()


# --- a fake registry for what Distribution cannot do ----------------------------------------------


class FakeRegistry:
    """Serves fixed manifests and blobs, read-only and anonymous, whatever their digests say.

    `manifests` maps `<repo>:<tag or digest>` to (media type, bytes); `blobs` maps a digest to the
    bytes served for it (which may be wrong on purpose). GETs of the blobs in `stall` get no answer
    at all, not even headers, until `released` is set (a link that stalled).
    """

    def __init__(
        self,
        manifests: Mapping[str, tuple[str, bytes]],
        blobs: Mapping[str, bytes],
        stall: Collection[str] = (),
        released: threading.Event | None = None,
    ) -> None:
        self.manifests = dict(manifests)
        self.blobs = dict(blobs)
        self.stall, self.released = set(stall), released or threading.Event()
        self.requests: list[str] = []
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                fake.requests.append(f"GET {self.path}")
                self._answer(send_body=True)

            def do_HEAD(self) -> None:
                fake.requests.append(f"HEAD {self.path}")
                self._answer(send_body=False)

            def _answer(self, send_body: bool) -> None:
                parts = self.path.split("/")
                if self.path in ("/v2/", "/v2"):
                    return self._send(200, "application/json", b"{}", send_body)
                if len(parts) >= 5 and parts[-2] == "manifests":
                    repo = "/".join(parts[2:-2])
                    found = fake.manifests.get(f"{repo}:{parts[-1]}")
                    if found is None:
                        body = b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}'
                        return self._send(404, "application/json", body, send_body)
                    media_type, data = found
                    digest = "sha256:" + hashlib.sha256(data).hexdigest()
                    return self._send(200, media_type, data, send_body, {"Docker-Content-Digest": digest})
                if len(parts) >= 5 and parts[-2] == "blobs" and parts[-1] in fake.blobs:
                    if parts[-1] in fake.stall and send_body:
                        fake.released.wait(120)
                    return self._send(200, "application/octet-stream", fake.blobs[parts[-1]], send_body)
                self._send(404, "application/json", b'{"errors":[{"code":"BLOB_UNKNOWN"}]}', send_body)

            def _send(
                self,
                status: int,
                media_type: str,
                body: bytes,
                send_body: bool,
                extra: Mapping[str, str] | None = None,
            ) -> None:
                self.send_response(status)
                self.send_header("Content-Type", media_type)
                self.send_header("Content-Length", str(len(body)))
                for key, value in (extra or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                if send_body:
                    self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
