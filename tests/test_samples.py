"""Every Modelfile in samples/ builds as-is with the real Gemma 3 270M GGUF."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from modelyard.builder.build import Builder
from modelyard.reference import parse_reference
from modelyard.store import Store

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
GEMMA_FILE = "gemma-3-270m-q4_k_m.gguf"

pytestmark = pytest.mark.gemma


@pytest.fixture
def samples(tmp_path: Path, gemma_gguf: Path) -> Path:
    """A copy of samples/ with the GGUF linked in where the README's set-up puts it."""
    copy = tmp_path / "samples"
    shutil.copytree(SAMPLES, copy, ignore=shutil.ignore_patterns("*.gguf"))
    os.symlink(gemma_gguf, copy / "gemma3" / GEMMA_FILE)
    return copy


def test_gemma_samples_build_and_agree(tmp_path: Path, samples: Path) -> None:
    store = Store(tmp_path / "home" / "store")
    builder = Builder(store, tmp_path / "home" / "cache")
    chat = builder.build_file(samples / "gemma3" / "Modelfile", parse_reference("gemma3-chat"))
    yaml_chat = builder.build_file(samples / "gemma3" / "Modelfile.yaml", parse_reference("gemma3-chat-yaml"))
    assert yaml_chat.digest == chat.digest, "the YAML form is the same image"

    parts = store.read_parts(store.read_manifest(chat.digest))
    assert parts.template and "<start_of_turn>" in parts.template
    assert parts.params["stop"] == ["<end_of_turn>"]
    assert [m["role"] for m in parts.messages] == ["user", "assistant"]
    config = store.read_config(store.read_manifest(chat.digest))["config"]
    assert (config["architecture"], config["quantization"], config["paramSize"]) == (
        "gemma3",
        "Q4_K_M",
        "268.10M",
    )

    before = {d: store.blobs.size(d) for d in store.blobs.digests()}
    for name in ("Modelfile", "Modelfile.yaml"):
        pirate = builder.build_file(samples / "pirate" / name, parse_reference(f"pirate-{name.lower()}"))
        pirate_parts = store.read_parts(store.read_manifest(pirate.digest))
        assert pirate_parts.weights == parts.weights and pirate_parts.template == parts.template
        assert pirate_parts.system is not None and "pirate" in pirate_parts.system
    added = sum(store.blobs.size(d) for d in store.blobs.digests() if d not in before)
    assert added < 16 * 1024, f"the derived images added {added} bytes"
