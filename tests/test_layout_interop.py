"""The store is a standard OCI image layout: an independent client (skopeo) reads and copies it.

skopeo's plain `inspect` (no --raw) refuses every OCI artifact whose config is not an image
config ("unsupported image-specific operation on artifact"), whatever the layout; so the checks
here are the ones that read artifacts: `inspect --raw`, `inspect --config --raw`, and `copy`, which
re-hashes every blob it reads and so fails on a layout with a bad blob (shown below).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from modelyard.builder.build import Builder
from modelyard.reference import parse_reference
from modelyard.store import Store


def skopeo(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("skopeo") is None:
        pytest.fail("skopeo is not installed (Debian package 'skopeo'; .ci/run installs it)")
    return subprocess.run(["skopeo", *args], capture_output=True, text=True, timeout=120)


@pytest.fixture
def built(tmp_path: Path, tiny_gguf: Path) -> tuple[Store, str]:
    (tmp_path / "Modelfile").write_text(f"FROM {tiny_gguf}\nSYSTEM hi\nPARAMETER temperature 0.1\n")
    store = Store(tmp_path / "home" / "store")
    digest = (
        Builder(store, tmp_path / "home" / "cache")
        .build_file(tmp_path / "Modelfile", parse_reference("team/tiny:v1"))
        .digest
    )
    return store, digest


def test_skopeo_inspects_the_manifest_and_config(built: tuple[Store, str]) -> None:
    store, digest = built
    ref = f"oci:{store.root}:team/tiny:v1"
    raw = skopeo("inspect", "--raw", ref)
    assert raw.returncode == 0, raw.stderr
    assert raw.stdout.encode() == store.blobs.read_bytes(digest), "skopeo reads the exact manifest bytes"
    config = skopeo("inspect", "--config", "--raw", ref)
    assert config.returncode == 0, config.stderr
    assert json.loads(config.stdout)["config"]["format"] == "gguf"


def test_skopeo_copies_the_image_verifying_every_blob(built: tuple[Store, str], tmp_path: Path) -> None:
    store, digest = built
    copied = skopeo("copy", f"oci:{store.root}:team/tiny:v1", f"oci:{tmp_path / 'copy'}:tiny")
    assert copied.returncode == 0, copied.stderr
    manifest = store.read_manifest(digest)
    for blob in manifest.blob_digests():
        assert (tmp_path / "copy" / "blobs" / "sha256" / blob[7:]).read_bytes() == store.blobs.read_bytes(
            blob
        )


def test_skopeo_copy_rejects_a_corrupted_blob(built: tuple[Store, str], tmp_path: Path) -> None:
    """The control for the test above: copy really checks digests."""
    store, digest = built
    system_layer = store.read_manifest(digest).layers[1]
    store.blobs.path(system_layer.digest).write_bytes(b"tampered")
    copied = skopeo("copy", f"oci:{store.root}:team/tiny:v1", f"oci:{tmp_path / 'copy'}:tiny")
    assert copied.returncode != 0
    assert "digest" in copied.stderr.lower()


def test_an_image_skopeo_writes_into_the_store_under_a_short_name_is_usable(built: tuple[Store, str]) -> None:
    """skopeo names entries as it is told (`foo`, `Foo`); they resolve as `foo:latest` does."""
    store, digest = built
    for name in ("foo", "Bar"):
        copied = skopeo("copy", f"oci:{store.root}:team/tiny:v1", f"oci:{store.root}:{name}")
        assert copied.returncode == 0, copied.stderr
    assert store.resolve(parse_reference("foo")).digest == digest
    assert store.resolve(parse_reference("bar:latest")).digest == digest
    store.remove([parse_reference("foo")])
    assert {r.name for r in store.images()} == {"team/tiny:v1", "library/bar:latest"}
    # After our write, skopeo still finds its entry under the name it wrote.
    assert skopeo("inspect", "--raw", f"oci:{store.root}:Bar").returncode == 0
