"""Reading an image from the store for serving."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import pytest

from modelyard.builder.build import Builder
from modelyard.errors import BlobNotFoundError, CorruptStoreError, ImageNotFoundError
from modelyard.reference import parse_reference
from modelyard.runtime.servable import load_servable
from modelyard.server.http_errors import classify
from modelyard.store import Store


def test_servable_from_a_built_image(tmp_path: Path, tiny_gguf: Path, tiny_lora: Path) -> None:
    shutil.copyfile(tiny_gguf, tmp_path / "w.gguf")
    shutil.copyfile(tiny_lora, tmp_path / "l.gguf")
    (tmp_path / "Modelfile").write_text(
        "FROM ./w.gguf\nADAPTER ./l.gguf\nTEMPLATE {{ .Prompt }}\nSYSTEM be kind\n"
        "PARAMETER num_ctx 512\nPARAMETER temperature 0.1\nMESSAGE user hi\n"
    )
    store = Store(tmp_path / "home" / "store")
    digest = (
        Builder(store, tmp_path / "home" / "cache")
        .build_file(tmp_path / "Modelfile", parse_reference("team/m:v1"))
        .digest
    )
    servable = load_servable(store, parse_reference("team/m:v1"))
    assert servable.digest == digest and servable.name == "team/m:v1"
    assert servable.weights.read_bytes() == tiny_gguf.read_bytes(), "the blob itself, used in place"
    assert servable.adapters == ((store.blobs.path(servable.manifest.layers[1].digest), 1.0),)
    assert servable.prompting.system == "be kind" and servable.prompting.template == "{{ .Prompt }}"
    assert [m.content for m in servable.prompting.messages] == ["hi"]
    assert servable.gguf.shape.n_layers == 2 and servable.gguf.chat_template is None
    request = servable.request(options={"num_ctx": 1024}, keep_alive=60.0)
    assert request.options == {"num_ctx": 1024, "temperature": 0.1}, "request options override the image's"
    assert request.shape is servable.gguf.shape and request.keep_alive == 60.0
    with pytest.raises(ImageNotFoundError):
        load_servable(store, parse_reference("team/m:v2"))


def test_damaged_weights_in_the_store_are_the_servers_error_not_the_clients(
    tmp_path: Path, tiny_gguf: Path
) -> None:
    shutil.copyfile(tiny_gguf, tmp_path / "w.gguf")
    (tmp_path / "Modelfile").write_text("FROM ./w.gguf\n")
    store = Store(tmp_path / "home" / "store")
    Builder(store, tmp_path / "home" / "cache").build_file(tmp_path / "Modelfile", parse_reference("damaged"))
    parts = store.read_parts(store.read_manifest(store.resolve(parse_reference("damaged")).digest))
    assert parts.weights is not None
    weights = store.blobs.path(parts.weights.digest)
    weights.chmod(0o644)
    weights.write_bytes(b"not a gguf")
    with pytest.raises(CorruptStoreError, match="modelyard verify") as damaged:
        load_servable(store, parse_reference("damaged"))
    error = classify(damaged.value)
    assert error is not None and error.status == 500 and "cannot be read" in error.message


def test_a_missing_layer_names_the_image_and_what_to_do(tmp_path: Path, tiny_gguf: Path) -> None:
    """A README review: /api/generate of an image whose SYSTEM blob was gone answered only the digest."""
    shutil.copyfile(tiny_gguf, tmp_path / "w.gguf")
    (tmp_path / "Modelfile").write_text("FROM ./w.gguf\nSYSTEM damaged soon\n")
    store = Store(tmp_path / "home" / "store")
    Builder(store, tmp_path / "home" / "cache").build_file(tmp_path / "Modelfile", parse_reference("dmg"))
    manifest = store.read_manifest(store.resolve(parse_reference("dmg")).digest)
    [system] = [layer for layer in manifest.layers if layer.media_type.endswith(".system")]
    store.blobs.path(system.digest).unlink()
    with pytest.raises(BlobNotFoundError) as missing:
        load_servable(store, parse_reference("dmg"))
    error = classify(missing.value)
    assert error is not None and error.status == 500
    assert f"blob {system.digest} is missing from the store (needed by dmg:latest)" in error.message
    assert "`modelyard verify` says what is wrong and how to repair it" in error.message


@pytest.mark.parametrize(
    ("error", "status", "fragment"),
    [
        pytest.param(OSError(errno.ENOSPC, "No space left"), 507, "prune --grace 0", id="disk-full"),
        pytest.param(OSError(errno.EROFS, "Read-only", "/s/ingest/x"), 500, "read-only", id="ro"),
        # `ulimit -f`, or FAT32's 4 GiB (a serving review: an opaque internal error).
        pytest.param(OSError(errno.EFBIG, "File too large", "/s/x"), 507, "file size limit", id="too-large"),
        pytest.param(PermissionError(errno.EACCES, "Denied", "/s"), 500, "permission denied", id="acl"),
    ],
)
def test_disk_errors_are_said_plainly(error: OSError, status: int, fragment: str) -> None:
    known = classify(error)
    assert known is not None and known.status == status and fragment in known.message
    assert known.message.startswith("the server cannot use its files")
    assert "/s" not in known.message, "the server's paths stay in its log, not in a client's answer"


def test_other_os_errors_stay_bugs() -> None:
    assert classify(ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")) is None


@pytest.mark.parametrize(
    ("parameter", "requested", "expected"),
    [
        pytest.param("10m", None, 600.0, id="image-default"),
        pytest.param("10m", 30, 30.0, id="request-wins"),
        pytest.param("-1", None, float("inf"), id="image-forever"),
        pytest.param(None, None, None, id="neither: the model keeps what it has"),
    ],
)
def test_keep_alive_from_the_request_else_the_image(
    tmp_path: Path, tiny_gguf: Path, parameter: str | None, requested: object, expected: float | None
) -> None:
    from modelyard.runtime.scheduler import Scheduler, SchedulerSettings
    from modelyard.server.inference import Inference
    from modelyard.server.metrics import Metrics

    lines = f"FROM {tiny_gguf}\n" + (f"PARAMETER keep_alive {parameter}\n" if parameter else "")
    (tmp_path / "Modelfile").write_text(lines)
    store = Store(tmp_path / "home" / "store")
    Builder(store, tmp_path / "home" / "cache").build_file(tmp_path / "Modelfile", parse_reference("m"))
    scheduler = Scheduler(SchedulerSettings(ram_budget=2**30))
    inference = Inference(store, scheduler, Metrics(scheduler.queue_depths), 300.0)
    servable = load_servable(store, parse_reference("m"))
    assert inference.model_keep_alive(servable, requested) == expected


@pytest.mark.parametrize(("pooling", "embedding"), [(None, False), (0, False), (1, True)])
def test_an_image_whose_config_does_not_say_is_judged_by_its_gguf(
    tmp_path: Path, pooling: int | None, embedding: bool
) -> None:
    """An image converted from Ollama's format has no output types in its config: the GGUF says."""
    from dataclasses import replace

    from tinygguf import write_tiny_llama

    weights = write_tiny_llama(tmp_path / "w.gguf", pooling=pooling)
    (tmp_path / "Modelfile").write_text("FROM ./w.gguf\n")
    store = Store(tmp_path / "home" / "store")
    Builder(store, tmp_path / "home" / "cache").build_file(tmp_path / "Modelfile", parse_reference("m"))
    built = load_servable(store, parse_reference("m"))
    assert weights.exists() and built.is_embedding_model is embedding
    assert replace(built, config={}).is_embedding_model is embedding


def test_the_images_a_spec_serves_are_those_it_resolves_to_in_the_store(
    tmp_path: Path, tiny_gguf: Path
) -> None:
    """A diff review: DELETE's 409 compared image texts, so for a model pinned by digest (stored
    as `name@sha256:…`, no tag) it refused deleting the unrelated `name:latest` and let the
    entry the model served go. It refuses a delete after which the model's image would not
    resolve in the store."""
    from types import SimpleNamespace
    from typing import Any, cast

    from modelyard.builder import modelfile as mf
    from modelyard.server.state import ServerState

    store = Store(tmp_path / "store")
    built = Builder(store, tmp_path / "cache").build(
        mf.Modelfile(from_=str(tiny_gguf), parameters={}), parse_reference("reg.example/x"), context=tmp_path
    )
    pinned = f"reg.example/x@{built.digest}"
    store.tag(parse_reference(pinned), built.digest)
    store.tag(parse_reference("reg.example/x:v2"), built.digest)
    targets = {"chat": SimpleNamespace(image=pinned, digest=built.digest, adapters=())}
    daemon = SimpleNamespace(
        served_names=lambda: list(targets), reconciler=SimpleNamespace(target=targets.get)
    )
    state = cast(Any, SimpleNamespace(daemon=daemon, store=store))
    using = lambda name: ServerState.spec_models_using(state, parse_reference(name))  # noqa: E731
    # Other entries of the repository hold the same digest: it stays resolvable, whichever goes.
    assert using(pinned) == [] and using("reg.example/x:latest") == [] and using("nothing") == []
    store.remove([parse_reference("reg.example/x:latest"), parse_reference("reg.example/x:v2")])
    assert using(pinned) == ["chat"], "the last entry holding it"
    targets["chat"] = SimpleNamespace(
        image="reg.example/x:v2", digest=built.digest, adapters=()
    )  # a tag, now gone
    assert using(pinned) == ["chat"], "resolved by its digest: the pinned entry is what serves it"


def test_a_spec_name_and_the_store_image_of_that_name_are_listed_once(
    tmp_path: Path, tiny_gguf: Path
) -> None:
    """A diff review: spec name `tiny` on the image `tiny` was listed as `tiny` and `tiny:latest`,
    one model to Ollama's clients, two entries in /api/tags."""
    from types import SimpleNamespace

    from modelyard.builder import modelfile as mf
    from modelyard.runtime.scheduler import Scheduler, SchedulerSettings
    from modelyard.server.state import ServerState
    from modelyard.settings import Settings

    store = Store(tmp_path / "store")
    built = Builder(store, tmp_path / "cache").build(
        mf.Modelfile(from_=str(tiny_gguf), parameters={}), parse_reference("tiny"), context=tmp_path
    )
    state = ServerState(Settings.from_env(), store, Scheduler(SchedulerSettings(ram_budget=2**30)))
    served = load_servable(store, parse_reference("tiny").with_digest(built.digest))
    state.daemon = SimpleNamespace(served_names=lambda: ["tiny"], servable_for=lambda _: served)  # type: ignore[assignment]
    listed = state.list_models()
    assert [m["name"] for m in listed] == ["tiny"]
    assert listed[0]["size"] == store.images()[0].size + sum(
        d.size for d in (served.manifest.config, *served.manifest.layers)
    ), "the same size as the store's entry"
