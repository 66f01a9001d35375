"""`POST /api/create`'s request as a Modelfile (pure): Ollama's fields read as Ollama's create.go
reads them, and whatever a Modelfile could not say again refused before a build starts."""

from __future__ import annotations

from typing import Any

import pytest

from modelyard.server.http_errors import HTTPError
from modelyard.server.ollama_api import CreateBody, _modelfile_from

GGUF = "sha256:" + "a" * 64
OTHER = "sha256:" + "b" * 64
LORA = "sha256:" + "c" * 64


def modelfile(fields: dict[str, Any], ggufs: tuple[str, ...] = (GGUF,)):
    body = CreateBody.model_validate({"model": "m", **fields})
    return _modelfile_from(body, lambda digest: digest in ggufs)


@pytest.mark.parametrize(
    ("fields", "attribute", "expected"),
    [
        pytest.param({"files": {"m.gguf": GGUF}}, "from_", GGUF, id="files-gguf-name"),
        # As Ollama: `FROM ./model` sends the file's bare name; its first bytes say it is a GGUF.
        pytest.param({"files": {"model": GGUF}}, "from_", GGUF, id="files-gguf-by-content"),
        pytest.param(
            {"files": {"model": GGUF, "notes.txt": OTHER}}, "from_", GGUF, id="files-one-gguf-of-two"
        ),
        # Empty text is "not given" (create.go: `if r.Template != ""`): the base's stays.
        pytest.param({"from": "base", "template": ""}, "template", None, id="empty-template"),
        pytest.param({"from": "base", "system": ""}, "system", None, id="empty-system"),
        pytest.param({"from": "base", "license": ""}, "licenses", (), id="empty-license"),
        pytest.param(
            {"from": "base", "license": ["MIT", ""]}, "licenses", ("MIT",), id="empty-license-in-list"
        ),
        pytest.param({"from": "base", "requires": "v0.9.0"}, "requires", "0.9.0", id="requires"),
        pytest.param(
            {"from": "base", "parameters": {"num_ctx": 2048.0}},
            "parameters",
            {"num_ctx": 2048},
            id="whole-float-int",
        ),
        # The older API: a client uploaded the files, then sent the Modelfile naming them `@digest`.
        pytest.param({"modelfile": f"FROM @{GGUF}\n"}, "from_", GGUF, id="text-from-at-digest"),
        pytest.param(
            {"modelfile": f"FROM base\nADAPTER @{LORA}\n"}, "adapters", (LORA,), id="text-adapter-at-digest"
        ),
    ],
)
def test_create_fields(fields: dict[str, Any], attribute: str, expected: object) -> None:
    got = getattr(modelfile(fields), attribute)
    assert (dict(got) if attribute == "parameters" else got) == expected


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        pytest.param({"files": {"model.bin": OTHER}}, "exactly one GGUF file, found 0", id="no-gguf"),
        pytest.param({"files": {"a.gguf": GGUF, "b.gguf": OTHER}}, "found 2", id="two-ggufs"),
        pytest.param(
            {"from": "base", "messages": [{"role": "tool", "content": "x"}]},
            "messages[0].role must be one of system, user, assistant, got 'tool'",
            id="role-tool",
        ),
        pytest.param(
            {"from": "base", "messages": [{"role": "user", "content": "x"}, {"role": "", "content": "y"}]},
            "messages[1].role",
            id="role-empty",
        ),
        pytest.param({"from": "base", "requires": "soon"}, "semver", id="requires-not-semver"),
        pytest.param(
            {"from": "base", "parameters": {"num_ctx": 2048.5}}, "expected an integer", id="fraction-int"
        ),
        pytest.param({"modelfile": "FROM @notadigest\n"}, "not an image name", id="text-at-not-a-digest"),
    ],
)
def test_create_refuses(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(HTTPError) as caught:
        modelfile(fields)
    assert caught.value.status == 400
    assert message in caught.value.message
