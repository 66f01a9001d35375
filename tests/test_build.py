"""`modelyard build` end to end on real (tiny) GGUFs: image format, determinism, layer sharing,
caching, adapters, quantization, and the show --modelfile round trip."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator
from tinygguf import write_tiny_llama

from modelyard.builder.build import Builder, created_timestamp
from modelyard.builder.quantize import NEEDS_IMPORTANCE_MATRIX, NOT_PRODUCED, buildable_types, quantize
from modelyard.errors import BuildError, GGUFError, QuantizeError
from modelyard.progress import ProgressEvent
from modelyard.reference import parse_reference
from modelyard.store import Store
from modelyard.store.image import (
    ARTIFACT_MODELPACK,
    CONFIG_MODELPACK,
    LAYER_ADAPTER,
    LAYER_LICENSE,
    LAYER_MESSAGES,
    LAYER_MODELFILE,
    LAYER_PARAMS,
    LAYER_SYSTEM,
    LAYER_TEMPLATE,
    LAYER_WEIGHT,
    MANIFEST_OCI,
)

# The CNCF ModelPack config schema's shape (modelpack/model-spec docs/config.md): every object
# closed, so a field outside the spec would fail here as it fails in modctl.
_STR = {"type": "string"}
MODELPACK_CONFIG_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["descriptor", "config", "modelfs"],
    "properties": {
        "descriptor": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                k: _STR
                for k in (
                    "createdAt",
                    "family",
                    "name",
                    "version",
                    "title",
                    "description",
                    "vendor",
                    "docURL",
                    "sourceURL",
                    "revision",
                )
            }
            | {"licenses": {"type": "array", "items": _STR}, "authors": {"type": "array", "items": _STR}},
        },
        "config": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                **{k: _STR for k in ("architecture", "format", "paramSize", "precision", "quantization")},
                "transformerConfig": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "attentionType": {"enum": ["mha", "gqa", "mla"]},
                        "mlpType": {"enum": ["dense", "moe"]},
                        **{
                            k: {"type": "integer", "minimum": 1}
                            for k in (
                                "numLayers",
                                "numAttentionHeads",
                                "numKVHeads",
                                "hiddenSize",
                                "intermediateSize",
                            )
                        },
                    },
                },
                "capabilities": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "inputTypes": {
                            "type": "array",
                            "items": {"enum": ["text", "image", "audio", "video", "embedding", "other"]},
                        },
                        "outputTypes": {
                            "type": "array",
                            "items": {"enum": ["text", "image", "audio", "video", "embedding", "other"]},
                        },
                        "reasoning": {"type": "boolean"},
                        "toolUsage": {"type": "boolean"},
                    },
                },
            },
        },
        "modelfs": {
            "type": "object",
            "additionalProperties": False,
            "required": ["type", "diffIds"],
            "properties": {"type": {"enum": ["layers"]}, "diffIds": {"type": "array", "minItems": 1}},
        },
    },
}

CHAT_MODELFILE = """\
FROM ./weights.gguf
TEMPLATE \"\"\"{{ range .Messages }}<|{{ .Role }}|>{{ .Content }}
{{ end }}<|assistant|>\"\"\"
SYSTEM You are terse.
PARAMETER temperature 0.3
PARAMETER stop <|user|>
PARAMETER stop <|end|>
MESSAGE user hi
MESSAGE assistant hello
LICENSE MIT
"""


class Recorder:
    def __init__(self) -> None:
        self.events: list[ProgressEvent] = []

    def __call__(self, event: ProgressEvent) -> None:
        self.events.append(event)

    def statuses(self) -> list[str]:
        return [e.status for e in self.events]


@pytest.fixture
def workdir(tmp_path: Path, tiny_gguf: Path) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    shutil.copyfile(tiny_gguf, work / "weights.gguf")
    (work / "Modelfile").write_text(CHAT_MODELFILE)
    return work


def make_builder(home: Path, **kwargs: object) -> tuple[Builder, Store, Recorder]:
    store = Store(home / "store")
    recorder = Recorder()
    return Builder(store, home / "cache", progress=recorder, **kwargs), store, recorder  # type: ignore[arg-type]


def build(home: Path, modelfile: Path, name: str, **kwargs: object) -> tuple[str, Store, Recorder]:
    builder, store, recorder = make_builder(home)
    result = builder.build_file(modelfile, parse_reference(name), **kwargs)  # type: ignore[arg-type]
    return result.digest, store, recorder


def test_image_is_a_modelpack_artifact(tmp_path: Path, workdir: Path) -> None:
    digest, store, _ = build(tmp_path / "home", workdir / "Modelfile", "chat:v1")
    manifest = store.read_manifest(digest)
    raw = json.loads(store.blobs.read_bytes(digest))
    assert raw["mediaType"] == MANIFEST_OCI and raw["artifactType"] == ARTIFACT_MODELPACK
    assert manifest.config.media_type == CONFIG_MODELPACK
    assert [layer.media_type for layer in manifest.layers] == [
        LAYER_WEIGHT,
        LAYER_TEMPLATE,
        LAYER_SYSTEM,
        LAYER_PARAMS,
        LAYER_MESSAGES,
        LAYER_LICENSE,
        LAYER_MODELFILE,
    ]
    for layer in manifest.layers:
        assert (
            layer.annotations["org.cncf.model.filepath"]
            == layer.annotations["org.opencontainers.image.title"]
        )
    assert manifest.layers[0].annotations["org.cncf.model.filepath"] == "model.gguf"

    config = store.read_config(manifest)
    Draft202012Validator(MODELPACK_CONFIG_SCHEMA).validate(config)
    assert config["modelfs"]["diffIds"] == [layer.digest for layer in manifest.layers]
    assert config["config"]["architecture"] == "llama"
    assert config["config"]["quantization"] == "F32"
    assert config["config"]["transformerConfig"]["numLayers"] == 2
    assert config["config"]["transformerConfig"]["attentionType"] == "gqa"
    assert manifest.annotations["io.modelyard.gguf.context-length"] == "256"
    assert manifest.annotations["io.modelyard.gguf.chat-template"] == "false"

    parts = store.read_parts(manifest)
    assert parts.system == "You are terse."
    assert parts.params == {"stop": ["<|user|>", "<|end|>"], "temperature": 0.3}
    assert parts.messages == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert parts.licenses == ("MIT",)
    assert store.blobs.read_bytes(manifest.layers[0].digest) == (workdir / "weights.gguf").read_bytes()


def test_same_inputs_same_digest_across_stores(tmp_path: Path, workdir: Path) -> None:
    first, _, _ = build(tmp_path / "a", workdir / "Modelfile", "chat")
    again, _, _ = build(tmp_path / "a", workdir / "Modelfile", "chat")
    elsewhere, _, _ = build(tmp_path / "b", workdir / "Modelfile", "other/name:tag")
    assert first == again == elsewhere


def test_source_date_epoch_stamps_the_image(tmp_path: Path, workdir: Path) -> None:
    builder, store, _ = make_builder(tmp_path / "h", created=created_timestamp(1_700_000_000))
    digest = builder.build_file(workdir / "Modelfile", parse_reference("m")).digest
    manifest = store.read_manifest(digest)
    assert store.read_config(manifest)["descriptor"]["createdAt"] == "2023-11-14T22:13:20Z"
    default, _, _ = build(tmp_path / "h2", workdir / "Modelfile", "m")
    assert default != digest


def test_yaml_form_builds_the_same_image(tmp_path: Path, workdir: Path) -> None:
    (workdir / "Modelfile.yaml").write_text(
        "from: ./weights.gguf\n"
        'template: "{{ range .Messages }}<|{{ .Role }}|>{{ .Content }}\\n{{ end }}<|assistant|>"\n'
        "system: You are terse.\n"
        "parameters: {temperature: 0.3, stop: ['<|user|>', '<|end|>']}\n"
        "messages: [{role: user, content: hi}, {role: assistant, content: hello}]\n"
        "license: MIT\n"
    )
    text_form, _, _ = build(tmp_path / "h", workdir / "Modelfile", "m")
    yaml_form, _, _ = build(tmp_path / "h", workdir / "Modelfile.yaml", "m-yaml")
    assert yaml_form == text_form


def test_empty_texts_keep_the_base_models_as_in_ollama(tmp_path: Path, workdir: Path) -> None:
    """A Modelfile review: `SYSTEM ""` (or TEMPLATE, LICENSE; the YAML form too) wiped the base's
    value, and `TEMPLATE ""` on a GGUF made every prompt empty; Ollama's create drops empty fields."""
    home = tmp_path / "home"
    base, store, _ = build(home, workdir / "Modelfile", "chat")
    (workdir / "Empty").write_text('FROM chat\nSYSTEM ""\nTEMPLATE """"""\nLICENSE ""\n')
    (workdir / "Empty.yaml").write_text('from: chat\nsystem: ""\ntemplate: ""\n')
    base_parts = store.read_parts(store.read_manifest(base))
    for name, modelfile in [("text-form", workdir / "Empty"), ("yaml-form", workdir / "Empty.yaml")]:
        derived, store, _ = build(home, modelfile, name)
        parts = store.read_parts(store.read_manifest(derived))
        assert (parts.system, parts.template, parts.licenses) == (
            base_parts.system,
            base_parts.template,
            base_parts.licenses,
        )
        assert derived == base, "nothing changed: the same image"
    (workdir / "Plain").write_text('FROM ./weights.gguf\nTEMPLATE ""\n')
    plain, store, _ = build(home, workdir / "Plain", "plain")
    assert store.read_parts(store.read_manifest(plain)).template is None, "no empty template layer"


def test_derived_model_shares_weights(tmp_path: Path, workdir: Path) -> None:
    home = tmp_path / "home"
    base, store, _ = build(home, workdir / "Modelfile", "chat")
    blobs_before = set(store.blobs.digests())
    bytes_before = sum(store.blobs.size(d) for d in blobs_before)
    (workdir / "Derived").write_text("FROM chat\nSYSTEM You are a pirate.\nPARAMETER top_k 10\n")
    derived, store, recorder = build(home, workdir / "Derived", "pirate")
    new_blobs = set(store.blobs.digests()) - blobs_before
    added = sum(store.blobs.size(d) for d in new_blobs)
    assert added < 8 * 1024, f"a derived image adds kilobytes, not weights ({added} bytes)"
    assert bytes_before > 600_000
    base_parts = store.read_parts(store.read_manifest(base))
    parts = store.read_parts(store.read_manifest(derived))
    assert parts.weights == base_parts.weights
    assert parts.template == base_parts.template and parts.messages == base_parts.messages
    assert parts.system == "You are a pirate."
    assert parts.params == {**base_parts.params, "top_k": 10}, "parameters merge, new ones win"
    assert not any(s.startswith("parsing GGUF") for s in recorder.statuses())


def test_rebuild_uses_the_file_cache(tmp_path: Path, workdir: Path) -> None:
    home = tmp_path / "home"
    _, _, first = build(home, workdir / "Modelfile", "m")
    assert any(e.status == "copying model file" for e in first.events)
    _, _, second = build(home, workdir / "Modelfile", "m")
    assert not any(e.status in ("copying model file", "parsing GGUF") for e in second.events), (
        "an unchanged GGUF is neither re-read nor re-hashed"
    )
    (workdir / "weights.gguf").touch()  # a new mtime: the cache must not trust it
    _, _, third = build(home, workdir / "Modelfile", "m")
    assert any(e.status == "copying model file" for e in third.events)


def test_a_file_rewritten_in_place_with_its_old_mtime_is_hashed_again(tmp_path: Path, workdir: Path) -> None:
    """`cp -p`, `touch -r` or `rsync -t` onto the same file keep its size and mtime: the ctime still
    moves (a build review: the cache gave the old digest, and the image kept the old weights)."""
    home = tmp_path / "home"
    build(home, workdir / "Modelfile", "m")
    weights = workdir / "weights.gguf"
    before = weights.stat()
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # same size, other bytes
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (weights.stat().st_size, weights.stat().st_mtime_ns, weights.stat().st_ino) == (
        before.st_size,
        before.st_mtime_ns,
        before.st_ino,
    )
    _, store, recorder = build(home, workdir / "Modelfile", "m")
    assert any(e.status == "copying model file" for e in recorder.events)
    parts = store.read_parts(store.read_manifest(store.resolve(parse_reference("m")).digest))
    assert parts.weights is not None
    assert parts.weights.digest == "sha256:" + hashlib.sha256(bytes(data)).hexdigest()


def test_rebuild_that_changes_system_writes_no_weight_blob(tmp_path: Path, workdir: Path) -> None:
    home = tmp_path / "home"
    build(home, workdir / "Modelfile", "m")
    (workdir / "Modelfile").write_text(CHAT_MODELFILE.replace("You are terse.", "You are verbose."))
    _, store, recorder = build(home, workdir / "Modelfile", "m")
    created = [s for s in recorder.statuses() if s.startswith("creating new layer")]
    weights_digest = store.read_parts(store.read_manifest(store.images()[0].digest)).weights.digest  # type: ignore[union-attr]
    assert f"creating new layer {weights_digest}" not in created
    assert len(created) == 3, created  # the system layer, the Modelfile layer, the config
    builder, _, _ = make_builder(home)
    again = builder.build_file(workdir / "Modelfile", parse_reference("m"))
    assert (again.layers_created, again.layers_reused) == (
        0,
        len(store.read_manifest(again.digest).layers) + 1,
    )


def test_show_modelfile_round_trip(tmp_path: Path, workdir: Path, tiny_lora: Path) -> None:
    home = tmp_path / "home"
    shutil.copyfile(tiny_lora, workdir / "lora.gguf")
    (workdir / "Modelfile").write_text(CHAT_MODELFILE + "ADAPTER ./lora.gguf\nREQUIRES 0.5.0\n")
    digest, store, _ = build(home, workdir / "Modelfile", "m")
    normalized = store.read_parts(store.read_manifest(digest)).modelfile
    assert normalized is not None and normalized.startswith("FROM sha256:")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "Modelfile").write_text(normalized)
    again, _, _ = build(home, elsewhere / "Modelfile", "copy")
    assert again == digest, "show --modelfile builds back to the same image"


def test_an_image_without_a_modelfile_layer_shows_the_one_its_layers_make(
    tmp_path: Path, workdir: Path, tiny_lora: Path
) -> None:
    """An audit: `show --modelfile` refused every image another tool made (Ollama's, pulled), and
    /api/show answered "modelfile": "", though FROM such an image built. Ollama writes one from the
    layers; so do we, the same text a build writes for them."""
    from modelyard.builder.normalized import image_modelfile

    shutil.copyfile(tiny_lora, workdir / "lora.gguf")
    (workdir / "Modelfile").write_text(CHAT_MODELFILE + "ADAPTER ./lora.gguf\nREQUIRES 0.5.0\n")
    digest, store, _ = build(tmp_path / "home", workdir / "Modelfile", "m")
    manifest = store.read_manifest(digest)
    parts = store.read_parts(manifest)
    foreign = dataclasses.replace(parts, modelfile=None)
    assert parts.modelfile is not None
    assert image_modelfile(foreign, manifest.annotations) == parts.modelfile
    assert image_modelfile(parts, {}) == parts.modelfile, "the layer, when there is one"
    assert image_modelfile(dataclasses.replace(foreign, weights=None), {}) is None


def test_a_base_image_removed_during_the_build_is_a_clear_error(tmp_path: Path, workdir: Path) -> None:
    """A store review: `rm base` while `build FROM base` ran failed with "blob … is missing from
    the store (needed by library/derived:latest)", exit 2, as if the store were damaged. Nothing
    here can store those weights again: the error says what happened and what to do."""
    (workdir / "Modelfile").write_text("FROM ./weights.gguf\n")
    build(tmp_path / "h", workdir / "Modelfile", "base")
    (workdir / "Derived").write_text("FROM base\nSYSTEM derived\n")
    store = Store(tmp_path / "h" / "store")

    def remove_base(event: ProgressEvent) -> None:
        if event.status == "writing manifest":
            store.remove([parse_reference("base")])

    builder = Builder(store, tmp_path / "h" / "cache", progress=remove_base)
    with pytest.raises(
        BuildError, match=r"derived:latest: blob sha256:\w+ \(model\) was removed from the store while"
    ):
        builder.build_file(workdir / "Derived", parse_reference("derived"))
    assert store.images() == [] and store.verify().ok


def test_an_image_built_from_an_image_keeps_its_requires(tmp_path: Path, workdir: Path) -> None:
    (workdir / "Modelfile").write_text("FROM ./weights.gguf\nREQUIRES 0.5.0\n")
    build(tmp_path / "h", workdir / "Modelfile", "base")
    (workdir / "Derived").write_text("FROM base\nSYSTEM derived\n")
    digest, store, _ = build(tmp_path / "h", workdir / "Derived", "derived")
    manifest = store.read_manifest(digest)
    assert manifest.annotations["io.modelyard.requires"] == "0.5.0"
    assert "REQUIRES 0.5.0" in (store.read_parts(manifest).modelfile or "")
    (workdir / "Newer").write_text("FROM base\nREQUIRES 0.9.0\n")
    digest, store, _ = build(tmp_path / "h", workdir / "Newer", "newer")
    assert store.read_manifest(digest).annotations["io.modelyard.requires"] == "0.9.0"


def test_an_image_built_from_an_image_adds_its_licenses_to_the_base_images(
    tmp_path: Path, workdir: Path
) -> None:
    """An audit: LICENSE in a Modelfile FROM an image replaced the base's licenses (a fine-tune
    dropped the model's own terms); Ollama adds them."""
    (workdir / "Modelfile").write_text('FROM ./weights.gguf\nLICENSE "Gemma Terms of Use"\n')
    build(tmp_path / "h", workdir / "Modelfile", "base")
    (workdir / "Derived").write_text('FROM base\nLICENSE MIT\nLICENSE "Gemma Terms of Use"\n')
    digest, store, _ = build(tmp_path / "h", workdir / "Derived", "derived")
    parts = store.read_parts(store.read_manifest(digest))
    assert parts.licenses == ("Gemma Terms of Use", "MIT")
    (workdir / "Plain").write_text("FROM base\nSYSTEM hi\n")
    digest, store, _ = build(tmp_path / "h", workdir / "Plain", "plain")
    assert store.read_parts(store.read_manifest(digest)).licenses == ("Gemma Terms of Use",)


def test_one_file_of_a_split_gguf_is_refused_with_how_to_merge_it(tmp_path: Path) -> None:
    """An audit: FROM the first file of a split GGUF built an image of that file alone, which
    llama.cpp can never load (it finds the other files by the first one's name)."""
    split = tmp_path / "split"
    split.mkdir()
    write_tiny_llama(split / "tiny.gguf", split_max_tensors=10)
    files = sorted(split.glob("*.gguf"))
    assert len(files) > 1 and files[0].name == f"tiny-00001-of-0000{len(files)}.gguf"
    (tmp_path / "First").write_text(f"FROM {files[0]}\n")
    (tmp_path / "Folder").write_text(f"FROM {split}\n")
    builder, store, _ = make_builder(tmp_path / "h")
    with pytest.raises(GGUFError, match=f"one of the {len(files)} files of a split GGUF; merge them"):
        builder.build_file(tmp_path / "First", parse_reference("m"))
    with pytest.raises(BuildError, match=r"holds a split GGUF .*llama-gguf-split --merge"):
        builder.build_file(tmp_path / "Folder", parse_reference("m"))
    assert store.images() == []


def test_a_text_too_large_is_refused_before_the_weights_are_copied(tmp_path: Path, workdir: Path) -> None:
    (workdir / "Modelfile").write_text('FROM ./weights.gguf\nSYSTEM """' + "x" * (17 << 20) + '"""\n')
    builder, _, recorder = make_builder(tmp_path / "h")
    with pytest.raises(BuildError, match="the SYSTEM prompt is"):
        builder.build_file(workdir / "Modelfile", parse_reference("big"))
    assert not any(status.startswith("creating new layer") for status in recorder.statuses())


def test_adapter_layer(tmp_path: Path, workdir: Path, tiny_lora: Path) -> None:
    shutil.copyfile(tiny_lora, workdir / "lora.gguf")
    (workdir / "Modelfile").write_text("FROM ./weights.gguf\nADAPTER ./lora.gguf\n")
    digest, store, _ = build(tmp_path / "h", workdir / "Modelfile", "m")
    manifest = store.read_manifest(digest)
    adapters = manifest.layers_of(LAYER_ADAPTER)
    assert len(adapters) == 1
    assert adapters[0].annotations["org.cncf.model.filepath"] == "adapters/adapter-1.gguf"
    assert store.blobs.read_bytes(adapters[0].digest) == tiny_lora.read_bytes()
    assert manifest.layers[0].media_type == LAYER_WEIGHT, "base weights stay the first layer"


def test_an_adapter_given_again_is_held_once(tmp_path: Path, workdir: Path, tiny_lora: Path) -> None:
    """FROM an image with an adapter, and ADAPTER it again: one layer, as a license is (a build
    review: two, which llama.cpp would both apply)."""
    shutil.copyfile(tiny_lora, workdir / "lora.gguf")
    (workdir / "Modelfile").write_text("FROM ./weights.gguf\nADAPTER ./lora.gguf\n")
    home = tmp_path / "h"
    build(home, workdir / "Modelfile", "base")
    (workdir / "Derived").write_text("FROM base\nADAPTER ./lora.gguf\nADAPTER ./lora.gguf\n")
    builder, store, _ = make_builder(home)
    result = builder.build_file(workdir / "Derived", parse_reference("derived"))
    adapters = store.read_manifest(result.digest).layers_of(LAYER_ADAPTER)
    assert [a.digest for a in adapters] == ["sha256:" + hashlib.sha256(tiny_lora.read_bytes()).hexdigest()]
    assert any("given twice" in warning for warning in result.warnings), result.warnings


@pytest.mark.parametrize(
    ("modelfile", "error", "fragment"),
    [
        pytest.param("FROM ./lora.gguf\n", GGUFError, "is a LoRA adapter", id="lora-as-from"),
        pytest.param(
            "FROM ./weights.gguf\nADAPTER ./weights.gguf\n",
            GGUFError,
            "not a LoRA adapter",
            id="base-as-adapter",
        ),
        pytest.param("FROM ./nope.gguf\n", BuildError, "no such file", id="missing-from"),
        pytest.param(
            "FROM ./weights.gguf\nADAPTER ./nope.gguf\n", BuildError, "no such file", id="missing-adapter"
        ),
        pytest.param("FROM never-built\n", BuildError, "no such file or image", id="unknown-image"),
        pytest.param("FROM ./notgguf.bin\n", GGUFError, "not a GGUF", id="not-gguf"),
        pytest.param("FROM ./truncated.gguf\n", GGUFError, "truncated", id="truncated"),
        pytest.param("FROM sha256:" + "0" * 64 + "\n", BuildError, "no such blob", id="unknown-blob"),
        pytest.param("FROM /dev/null\n", BuildError, "neither a GGUF file nor a directory", id="not-a-file"),
        pytest.param("FROM {existing}\n", BuildError, "is the image existing:latest, not", id="image-id"),
        pytest.param("FROM ./hf\n", BuildError, "safetensors weights, which a build does not", id="hf-dir"),
        pytest.param(
            'FROM ./weights.gguf\nSYSTEM """' + "x" * (17 << 20) + '"""\n',
            BuildError,
            "the SYSTEM prompt is 17,825,792 bytes",
            id="system-too-large",
        ),
        pytest.param(
            'FROM ./weights.gguf\nTEMPLATE """' + "{{ .Prompt }}" * 30000 + '"""\n',
            BuildError,
            "at most 262,144 are taken",
            id="template-too-large",
        ),
        pytest.param(
            'FROM ./weights.gguf\nSYSTEM """'
            + "x" * (9 << 20)
            + '"""\nLICENSE """'
            + "y" * (9 << 20)
            + '"""\n',
            BuildError,
            "the normalized Modelfile",
            id="texts-too-large-together",
        ),
    ],
)
def test_bad_sources_leave_the_store_unchanged(
    tmp_path: Path, workdir: Path, tiny_lora: Path, modelfile: str, error: type[Exception], fragment: str
) -> None:
    from tinygguf import write_not_gguf, write_truncated_gguf

    shutil.copyfile(tiny_lora, workdir / "lora.gguf")
    write_not_gguf(workdir / "notgguf.bin")
    write_truncated_gguf(workdir / "weights.gguf", workdir / "truncated.gguf")
    home = tmp_path / "home"
    (workdir / "hf").mkdir()
    (workdir / "hf" / "model.safetensors").write_bytes(b"{}")
    existing, _, _ = build(home, workdir / "Modelfile", "existing")
    before = sorted(p.name for p in (home / "store").rglob("*"))
    (workdir / "Bad").write_text(modelfile.replace("{existing}", existing))
    with pytest.raises(error, match=fragment):
        build(home, workdir / "Bad", "bad")
    assert sorted(p.name for p in (home / "store").rglob("*")) == before


@pytest.mark.parametrize(
    ("modelfile", "where"),
    [
        pytest.param("SYSTEM hi\nFROM ./nope.gguf\n", ":2:6: FROM ./nope.gguf: no such file", id="from"),
        pytest.param(
            "FROM  never-built\n", ":1:7: FROM never-built:latest: no such file or image", id="image"
        ),
        pytest.param(
            "FROM ./weights.gguf\nSYSTEM x\nADAPTER ./weights.gguf\n", ":3:9: ", id="adapter-of-its-kind"
        ),
    ],
)
def test_a_from_or_adapter_that_does_not_resolve_says_where_it_was_written(
    tmp_path: Path, workdir: Path, modelfile: str, where: str
) -> None:
    """A CLI review: parse errors said `Modelfile:3:11:`, these said no line."""
    (workdir / "Bad").write_text(modelfile)
    with pytest.raises(BuildError) as raised:
        build(tmp_path / "home", workdir / "Bad", "bad")
    assert str(raised.value).startswith(f"{workdir / 'Bad'}{where}"), raised.value


def test_quantize_f32_to_q8_0(tmp_path: Path, workdir: Path) -> None:
    (workdir / "Modelfile").write_text("FROM ./weights.gguf\n")
    digest, store, recorder = build(tmp_path / "h", workdir / "Modelfile", "q", quantize="q8_0")
    config = store.read_config(store.read_manifest(digest))
    assert config["config"]["quantization"] == "Q8_0"
    assert "quantizing F32 model to Q8_0" in recorder.statuses()
    # Progress after each tensor, in the source's bytes, to the whole of it (there was none: a
    # long quantize said nothing for minutes).
    counted = [e for e in recorder.events if e.status == "quantizing F32 model to Q8_0" and e.total]
    assert len(counted) > 2, recorder.events
    completed = [e.completed or 0 for e in counted]
    assert completed == sorted(completed) and completed[-1] == counted[-1].total
    assert list((tmp_path / "h" / "store" / "ingest").iterdir()) == [], "no quantizer output left behind"
    again, _, _ = build(tmp_path / "h", workdir / "Modelfile", "q", quantize="Q8_0")
    assert again == digest, "llama.cpp's quantizer is deterministic: same input, same image"


def test_quantized_weights_removed_before_the_tag_are_a_clear_error(tmp_path: Path, workdir: Path) -> None:
    """A diff review: `prune --grace 0` (what the full-disk advice says) took the quantized blob of
    a build under way, which then failed as a damaged store ("missing from the store", exit 2)."""
    (workdir / "Modelfile").write_text("FROM ./weights.gguf\n")
    store = Store(tmp_path / "h" / "store")

    def prune_everything(event: ProgressEvent) -> None:
        if event.status == "writing manifest":
            store.prune(grace_s=0)

    builder = Builder(store, tmp_path / "h" / "cache", progress=prune_everything)
    with pytest.raises(BuildError, match=r"q:latest: the quantized weights \(sha256:\w+\) were removed"):
        builder.build_file(workdir / "Modelfile", parse_reference("q"), quantize="q8_0")
    assert store.images() == [] and store.verify().ok


def test_quantize_refuses_quantized_source_and_unknown_type(tmp_path: Path, workdir: Path) -> None:
    (workdir / "Modelfile").write_text("FROM ./weights.gguf\n")
    home = tmp_path / "h"
    quantized, store, _ = build(home, workdir / "Modelfile", "q", quantize="Q8_0")
    weights = store.read_parts(store.read_manifest(quantized)).weights
    assert weights is not None
    shutil.copyfile(store.blobs.path(weights.digest), workdir / "q8.gguf")
    (workdir / "Q").write_text("FROM ./q8.gguf\n")
    with pytest.raises(QuantizeError, match=r"already quantized \(Q8_0\)"):
        build(home, workdir / "Q", "qq", quantize="Q4_K_M")
    with pytest.raises(QuantizeError, match="unknown quantization type 'Q9_X'") as unknown:
        build(home, workdir / "Modelfile", "qq", quantize="Q9_X")
    assert "Q4_K_M" in str(unknown.value) and "IQ2_XS" not in str(unknown.value), "only what a build makes"


@pytest.mark.parametrize(
    ("target", "fragment"),
    [("iq2_xs", "IQ2_XS needs an importance matrix"), ("NVFP4", "a build cannot make it")],
)
def test_quantize_refuses_types_it_cannot_make_before_any_work(
    tmp_path: Path, workdir: Path, target: str, fragment: str
) -> None:
    (workdir / "Modelfile").write_text("FROM ./weights.gguf\n")
    home = tmp_path / "h"
    build(home, workdir / "Modelfile", "existing")
    before = sorted(p.name for p in (home / "store").rglob("*"))
    builder, _, recorder = make_builder(home)
    with pytest.raises(QuantizeError, match=fragment):
        builder.build_file(workdir / "Modelfile", parse_reference("q"), quantize=target)
    assert not any("quantizing" in status for status in recorder.statuses()), "refused before any work"
    assert sorted(p.name for p in (home / "store").rglob("*")) == before


@pytest.mark.parametrize("target", sorted(NEEDS_IMPORTANCE_MATRIX | NOT_PRODUCED))
def test_types_a_build_refuses_are_still_refused_by_llama_cpp(tmp_path: Path, target: str) -> None:
    """Keeps the two lists true when llama-cpp-python changes: if a new one makes a type, this fails."""
    source = write_tiny_llama(tmp_path / "f32.gguf", n_vocab=1024, n_embd=256, n_ff=512, n_layer=1)
    with pytest.raises(QuantizeError, match=r"importance matrix|imatrix|invalid output file type"):
        quantize(source, tmp_path / "out.gguf", target)
    assert not (tmp_path / "out.gguf").exists()


@pytest.mark.parametrize("target", buildable_types())
def test_every_type_a_build_offers_is_made_and_read_back(tmp_path: Path, target: str) -> None:
    """An audit: Q2_0 was offered, quantized, then refused by the gguf package reading the output
    (its ggml type unknown to it), after the whole quantize. Keeps NOT_READABLE true when
    llama-cpp-python or gguf change."""
    from modelyard.builder.gguf_info import read_gguf_info

    source = write_tiny_llama(tmp_path / "f32.gguf", n_vocab=1024, n_embd=256, n_ff=512, n_layer=1)
    quantize(source, tmp_path / "out.gguf", target)
    assert read_gguf_info(tmp_path / "out.gguf").general_type == "model"


@pytest.mark.parametrize(
    ("metadata", "embedding"),
    [
        pytest.param({"general.architecture": "llama"}, False, id="decoder"),
        pytest.param({"general.architecture": "llama", "llama.pooling_type": 0}, False, id="pooling-none"),
        pytest.param({"general.architecture": "llama", "llama.pooling_type": 1}, True, id="pooling-mean"),
        pytest.param({"general.architecture": "qwen3", "qwen3.pooling_type": 3}, True, id="pooling-last"),
        pytest.param({"general.architecture": "bert"}, True, id="encoder-architecture"),
    ],
)
def test_an_embedding_model_declares_pooling(metadata: dict[str, object], embedding: bool) -> None:
    from modelyard.builder.compose import WeightsSummary, _is_embedding_model

    summary = WeightsSummary.from_metadata(metadata, file_type="F16", parameter_count=1, parameter_size="1")
    assert _is_embedding_model(summary) is embedding


def test_a_weights_blob_rm_deletes_while_a_build_reuses_it_is_stored_again(
    tmp_path: Path, workdir: Path
) -> None:
    """A build audit: `rm` of the only image on some weights, between a build's "using existing
    layer" and its tag, failed that build as if the store were damaged (exit 2). The build puts
    back what it reused under the store's lock, which rm deletes under."""
    (workdir / "Modelfile").write_text("FROM ./weights.gguf\n")
    home = tmp_path / "h"
    build(home, workdir / "Modelfile", "a")
    builder, store, recorder = make_builder(home)

    def rm_while_writing(event: ProgressEvent) -> None:
        recorder(event)
        if event.status == "writing manifest":  # as `modelyard rm a` from another shell
            store.remove([parse_reference("a")])

    builder.progress = rm_while_writing
    (workdir / "B").write_text("FROM ./weights.gguf\nSYSTEM b\n")
    digest = builder.build_file(workdir / "B", parse_reference("b")).digest
    assert "using existing layer" in " ".join(recorder.statuses()), "the weights were reused"
    weights = store.read_parts(store.read_manifest(digest)).weights
    assert weights is not None and store.blobs.exists(weights.digest)
    assert [r.name for r in store.images()] == ["library/b:latest"] and store.verify().ok


def test_a_from_the_registry_cannot_give_says_where_it_was_written(tmp_path: Path, workdir: Path) -> None:
    """A diff review: a pull's error (not a BuildError) said no line; its kind stays (exit 2)."""
    from modelyard.errors import RegistryUnavailableError

    def unreachable(ref: object) -> None:
        raise RegistryUnavailableError("127.0.0.1:9", "connection refused")

    store = Store(tmp_path / "store")
    (workdir / "Bad").write_text("FROM 127.0.0.1:9/team/base:v1\n")
    builder = Builder(store, tmp_path / "cache", fetch=unreachable)
    with pytest.raises(RegistryUnavailableError) as raised:
        builder.build_file(workdir / "Bad", parse_reference("bad"))
    assert str(raised.value).startswith(f"{workdir / 'Bad'}:1:6: "), raised.value


def test_the_yaml_form_says_where_a_from_or_adapter_was_written(tmp_path: Path, workdir: Path) -> None:
    (workdir / "Bad.yaml").write_text("system: hi\nfrom: ./weights.gguf\nadapters:\n  - ./nope.gguf\n")
    with pytest.raises(BuildError) as raised:
        build(tmp_path / "home", workdir / "Bad.yaml", "bad")
    assert str(raised.value).startswith(f"{workdir / 'Bad.yaml'}:4:5: ADAPTER ./nope.gguf"), raised.value
