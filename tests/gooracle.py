"""Go itself as the oracle for the template tests: tests/go_oracle/main.go, built once per session and
kept running, answering one JSON line per case (so a thousand cases cost one process start)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

SOURCE = Path(__file__).parent / "go_oracle" / "main.go"
TODAY = "2024-05-01"

_built: dict[str, Path] = {}


@dataclass(frozen=True)
class GoResult:
    output: str
    error: str  # "" when Go rendered the template
    stage: str  # "parse" or "exec" when error is set


class GoOracle:
    def __init__(self, binary: Path) -> None:
        self._proc = subprocess.Popen(
            [str(binary)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            bufsize=1,
        )

    def ask(self, request: Mapping[str, Any]) -> GoResult:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.write(json.dumps({"today": TODAY, **request}) + "\n")
        self._proc.stdin.flush()
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the Go oracle stopped (exit status {self._proc.poll()})")
        answer = json.loads(line)
        if answer["stage"] == "request":
            raise ValueError(answer["error"])
        return GoResult(answer["output"], answer["error"], answer["stage"])

    def render(self, template: str, data: Any = None) -> GoResult:
        """text/template as Ollama parses it, on generic data (see main.go for the encoding)."""
        return self.ask({"template": template, "data": to_oracle_data(data)})

    def render_values(self, template: str, values: Mapping[str, Any]) -> GoResult:
        """Ollama's template.Execute on Values given as Ollama's API JSON."""
        return self.ask({"template": template, "values": values})

    def close(self) -> None:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.close()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc.stdout.close()


def to_oracle_data(value: Any) -> Any:
    """Python data as the oracle reads it: JSONList/JSONMap keep their String() in the markers."""
    from modelyard.builder.gotemplate import JSONList, JSONMap

    if isinstance(value, JSONList):
        return {"__json_list__": [to_oracle_data(v) for v in value]}
    if isinstance(value, JSONMap):
        return {"__json_map__": {k: to_oracle_data(v) for k, v in value.items()}}
    if isinstance(value, Mapping):
        return {k: to_oracle_data(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_oracle_data(v) for v in value]
    return value


def build(workdir: Path) -> Path:
    """Build the oracle with the Go toolchain on PATH, once per session, caches in `workdir`."""
    if "binary" in _built:
        return _built["binary"]
    go = shutil.which("go")
    if go is None:
        pytest.fail(
            "Go is needed: these tests compare the template engine with Go's own text/template. "
            "Install it with scripts/install-system-deps (Debian's golang-go).",
            pytrace=False,
        )
    env = {
        **os.environ,
        "HOME": str(workdir),
        "GOCACHE": str(workdir / "gocache"),
        "GOPATH": str(workdir / "gopath"),
        "GOTOOLCHAIN": "local",
        "GOFLAGS": "",
        "GOPROXY": "off",
        "CGO_ENABLED": "0",
    }
    binary = workdir / "go-oracle"
    done = subprocess.run(
        [go, "build", "-o", str(binary), str(SOURCE)],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"building the Go oracle failed:\n{done.stderr}", pytrace=False)
    _built["binary"] = binary
    return binary


@pytest.fixture(scope="session")
def go_oracle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GoOracle]:
    oracle = GoOracle(build(tmp_path_factory.mktemp("go-oracle")))
    yield oracle
    oracle.close()
