"""Reading an image from the store for serving."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from modelyard.builder.build import Builder
from modelyard.errors import ImageNotFoundError
from modelyard.reference import parse_reference
from modelyard.runtime.servable import load_servable
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
