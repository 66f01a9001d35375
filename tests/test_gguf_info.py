from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import gguf
import numpy as np
import pytest
from tinygguf import write_gguf_with_version, write_not_gguf, write_tiny_llama, write_truncated_gguf

from modelyard.builder.gguf_info import (
    MAX_LISTED_ARRAY,
    GGUFInfo,
    gguf_metadata,
    human_parameter_count,
    is_quantized,
    read_gguf,
    read_gguf_info,
)
from modelyard.errors import GGUFError

TINY_PARAMETERS = 155_968  # 2 x 640 x 64 embeddings/output + 2 blocks + norms
TINY_TEMPLATE = "{% for m in messages %}{{ m.content }}{% endfor %}"


@pytest.mark.parametrize(
    ("fixture", "expected"),
    [
        pytest.param(
            "tiny_gguf",
            {
                "architecture": "llama",
                "general_type": "model",
                "file_type": "F32",
                "parameter_count": TINY_PARAMETERS,
                "parameter_size": "156K",
                "context_length": 256,
                "embedding_length": 64,
                "block_count": 2,
                "chat_template": None,
                "adapter_type": None,
                "adapter_alpha": None,
                "tensor_count": 3 + 2 * 9,
            },
            id="tiny-f32",
        ),
        pytest.param(
            "tiny_gguf_f16",
            {"file_type": "F16", "parameter_count": TINY_PARAMETERS, "tensor_count": 21},
            id="tiny-f16",
        ),
        pytest.param(
            "tiny_lora",
            {
                "architecture": "llama",
                "general_type": "adapter",
                "adapter_type": "lora",
                "adapter_alpha": 8.0,
                "file_type": "F32",
                # rank 4, 7 projections, 2 blocks: 4 x (in + out) per projection
                "parameter_count": 2 * 4 * (2 * 64 + 2 * (64 + 32) + 2 * 64 + 3 * (64 + 128)),
                "parameter_size": "8K",
                "context_length": None,
                "block_count": None,
                "tensor_count": 2 * 7 * 2,
            },
            id="lora",
        ),
        pytest.param(
            "gemma_gguf",
            {
                "architecture": "gemma3",
                "general_type": "model",
                "file_type": "Q4_K_M",
                "parameter_count": 268_098_176,
                "parameter_size": "268.10M",  # what Ollama shows for gemma3:270m
                "context_length": 32_768,
                "embedding_length": 640,
                "block_count": 18,
                "chat_template": None,  # this GGUF carries no tokenizer.chat_template
                "adapter_type": None,
                "size_bytes": 253_113_024,
                "tensor_count": 236,
            },
            id="gemma3-270m",
            marks=pytest.mark.gemma,
        ),
    ],
)
def test_read_gguf_info(request: pytest.FixtureRequest, fixture: str, expected: dict[str, object]) -> None:
    path = request.getfixturevalue(fixture)

    info = read_gguf_info(path)

    assert {field: value for field, value in asdict(info).items() if field in expected} == expected
    assert info.size_bytes == path.stat().st_size


def test_chat_template_is_read(tmp_path: Path) -> None:
    path = write_tiny_llama(tmp_path / "templated.gguf", chat_template=TINY_TEMPLATE)

    assert read_gguf_info(path).chat_template == TINY_TEMPLATE


@pytest.mark.parametrize(
    ("tensors", "expected"),
    [
        pytest.param(
            {"w": np.zeros((32, 32), np.float16), "norm": np.ones(32, np.float32)}, "F16", id="f16-matrix"
        ),
        pytest.param({"w": np.zeros((8, 32), np.float32)}, "F32", id="f32-matrix"),
        pytest.param({"norm": np.ones(32, np.float32)}, "unknown", id="only-vectors"),
        pytest.param({}, "unknown", id="no-tensors"),
    ],
)
def test_file_type_without_general_file_type_comes_from_the_matrices(
    tmp_path: Path, tensors: dict[str, np.ndarray], expected: str
) -> None:
    path = tmp_path / "no-file-type.gguf"
    writer = gguf.GGUFWriter(path, "llama")
    for name, array in tensors.items():
        writer.add_tensor(name, array)
    _write(writer)

    assert read_gguf_info(path).file_type == expected


@pytest.mark.parametrize(
    ("file_type", "expected"),
    [
        pytest.param("F32", False, id="f32"),
        pytest.param("F16", False, id="f16"),
        pytest.param("BF16", False, id="bf16"),
        pytest.param("f16", False, id="lowercase"),
        pytest.param("Q8_0", True, id="q8_0"),
        pytest.param("Q4_K_M", True, id="q4_k_m"),
        pytest.param("IQ2_XXS", True, id="iq2"),
        pytest.param("unknown", True, id="unknown-is-not-requantized"),
    ],
)
def test_is_quantized(file_type: str, expected: bool) -> None:
    assert is_quantized(file_type) is expected


@pytest.mark.parametrize(
    ("count", "expected"),
    [
        pytest.param(268_098_176, "268.10M", id="gemma3-270m"),
        pytest.param(8_030_261_248, "8.0B", id="llama3-8b"),
        pytest.param(7_000_000_000, "7B", id="whole-billions"),
        pytest.param(1_500_000_000, "1.5B", id="one-decimal-billions"),
        pytest.param(135_000_000, "135M", id="whole-millions"),
        pytest.param(155_968, "156K", id="thousands-rounded"),
        pytest.param(999, "999", id="small"),
    ],
)
def test_human_parameter_count_matches_ollama(count: int, expected: str) -> None:
    assert human_parameter_count(count) == expected


# --- metadata ------------------------------------------------------------------------------------


def test_metadata_values_are_plain_python(tiny_gguf: Path) -> None:
    metadata = gguf_metadata(tiny_gguf)

    assert metadata["general.architecture"] == "llama"
    assert metadata["general.file_type"] == 0
    assert metadata["llama.attention.layer_norm_rms_epsilon"] == 1e-05  # float32, shortest decimal
    assert metadata["tokenizer.ggml.add_bos_token"] is True
    assert metadata["tokenizer.ggml.tokens"] == "[640 items]"
    assert not any(key.startswith("GGUF.") for key in metadata)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        pytest.param(["a", "ü", "▁x"], ["a", "ü", "▁x"], id="strings"),
        pytest.param([1, 2, 3], [1, 2, 3], id="ints"),
        pytest.param(list(range(MAX_LISTED_ARRAY)), list(range(MAX_LISTED_ARRAY)), id="at-limit"),
        pytest.param(list(range(MAX_LISTED_ARRAY + 1)), f"[{MAX_LISTED_ARRAY + 1} items]", id="over-limit"),
        pytest.param(["s"] * 1000, "[1000 items]", id="long-strings"),
    ],
)
def test_metadata_arrays(tmp_path: Path, values: list[object], expected: object) -> None:
    path = tmp_path / "arrays.gguf"
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_array("test.values", values)
    writer.add_string("test.after", "still read")  # skipping the array must land on the next key
    _write(writer)

    metadata = gguf_metadata(path)

    assert (metadata["test.values"], metadata["test.after"]) == (expected, "still read")
    whole = read_gguf(path, whole_arrays=True).metadata  # /api/show's verbose: every element
    assert (whole["test.values"], whole["test.after"]) == (values, "still read")


def test_metadata_empty_array(tmp_path: Path) -> None:
    # GGUFWriter silently drops empty arrays, so this file is written by hand.
    empty_int32_array = _gguf_string("test.values") + struct.pack("<IIQ", 9, 5, 0)
    path = _handmade(empty_int32_array + ARCH_LLAMA, 2)(tmp_path, tmp_path)

    assert gguf_metadata(path) == {"test.values": [], "general.architecture": "llama"}


def test_big_endian_gguf(tmp_path: Path) -> None:
    path = tmp_path / "big-endian.gguf"
    writer = gguf.GGUFWriter(path, "llama", endianess=gguf.GGUFEndian.BIG)
    writer.add_context_length(4096)
    writer.add_float32("test.eps", 1e-6)
    writer.add_tensor("w", np.zeros((8, 32), np.float16))
    _write(writer)

    info = read_gguf_info(path)

    assert (info.context_length, info.file_type, info.parameter_count) == (4096, "F16", 256)
    assert gguf_metadata(path)["test.eps"] == 1e-6


@pytest.mark.parametrize("fixture", ["tiny_gguf", "tiny_gguf_f16", "tiny_lora"])
def test_agrees_with_gguf_reader(request: pytest.FixtureRequest, fixture: str) -> None:
    path = request.getfixturevalue(fixture)
    reader = gguf.GGUFReader(path)

    metadata = gguf_metadata(path)
    info = read_gguf_info(path)

    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        if field.types[0] == gguf.GGUFValueType.ARRAY and len(field.data) > MAX_LISTED_ARRAY:
            assert metadata[key] == f"[{len(field.data)} items]"
        else:
            assert metadata[key] == pytest.approx(field.contents()), key
    assert set(metadata) == {key for key in reader.fields if not key.startswith("GGUF.")}
    assert info.tensor_count == len(reader.tensors)
    assert info.parameter_count == sum(int(tensor.n_elements) for tensor in reader.tensors)


@pytest.mark.gemma
def test_gemma_metadata_summarises_the_vocabulary(gemma_gguf: Path) -> None:
    metadata = gguf_metadata(gemma_gguf)

    assert metadata["tokenizer.ggml.tokens"] == "[262144 items]"
    assert metadata["tokenizer.ggml.model"] == "llama"
    assert metadata["general.tags"] == ["gemma3", "gemma", "google", "text-generation"]
    assert metadata["gemma3.attention.sliding_window"] == 512
    assert metadata["general.file_type"] == gguf.LlamaFileType.MOSTLY_Q4_K_M


# --- files that are not usable -------------------------------------------------------------------


def _missing(tmp: Path, tiny: Path) -> Path:
    return tmp / "missing.gguf"


def _directory(tmp: Path, tiny: Path) -> Path:
    return tmp


def _not_gguf(tmp: Path, tiny: Path) -> Path:
    return write_not_gguf(tmp / "model.zip.gguf")


def _empty(tmp: Path, tiny: Path) -> Path:
    path = tmp / "empty.gguf"
    path.write_bytes(b"")
    return path


def _truncated(keep_bytes: Callable[[gguf.GGUFReader], int]) -> Callable[[Path, Path], Path]:
    def make(tmp: Path, tiny: Path) -> Path:
        return write_truncated_gguf(
            tiny, tmp / "truncated.gguf", keep_bytes=keep_bytes(gguf.GGUFReader(tiny))
        )

    return make


def _version(version: int) -> Callable[[Path, Path], Path]:
    return lambda tmp, tiny: write_gguf_with_version(tiny, tmp / f"v{version}.gguf", version)


def _handmade(kv_bytes: bytes, n_kv: int) -> Callable[[Path, Path], Path]:
    def make(tmp: Path, tiny: Path) -> Path:
        path = tmp / "handmade.gguf"
        path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, n_kv) + kv_bytes)
        return path

    return make


def _gguf_string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def _nested_arrays(depth: int, length: int) -> bytes:
    """A metadata value (type ARRAY) of `depth` arrays each holding the next: the header of each
    claims `length` elements, and the file stops before the first of the innermost."""
    array_of_arrays = struct.pack("<I", 9) + b"".join(struct.pack("<IQ", 9, length) for _ in range(depth))
    return array_of_arrays + struct.pack("<IQ", 4, 1)


ARCH_LLAMA = _gguf_string("general.architecture") + struct.pack("<I", 8) + _gguf_string("llama")


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        pytest.param(_missing, "file not found", id="missing"),
        pytest.param(_directory, "is a directory, not a GGUF file", id="directory"),
        pytest.param(_not_gguf, "not a GGUF file (magic b'PK\\x03\\x04', expected b'GGUF')", id="not-gguf"),
        pytest.param(_empty, "not a GGUF file (magic b''", id="empty"),
        pytest.param(_truncated(lambda _: 6), "truncated: the header runs past the end", id="cut-in-version"),
        pytest.param(_truncated(lambda _: 16), "truncated: the header runs past the end", id="cut-in-header"),
        pytest.param(
            _truncated(lambda _: 24 + 10), "truncated: the metadata runs past", id="cut-in-metadata"
        ),
        pytest.param(
            _truncated(lambda reader: reader.tensors[0].field.offset + 10),
            "truncated: the tensor index runs past the end",
            id="cut-in-tensor-index",
        ),
        pytest.param(
            _truncated(lambda reader: reader.data_offset + 10),
            "truncated: the data of tensor 'token_embd.weight' runs past the end",
            id="cut-in-first-tensor",
        ),
        pytest.param(
            _truncated(lambda _: -1),
            "truncated: the data of tensor 'blk.1.ffn_down.weight' runs past the end",
            id="cut-last-byte",
        ),
        pytest.param(_version(1), "unsupported GGUF version 1 (this reader handles 2 and 3)", id="version-1"),
        pytest.param(_version(4), "unsupported GGUF version 4", id="version-4"),
        pytest.param(
            _handmade(_gguf_string("x") + struct.pack("<I", 99), 1),
            "malformed GGUF metadata: unknown value type 99 for key 'x'",
            id="unknown-value-type",
        ),
        pytest.param(
            _handmade(ARCH_LLAMA + ARCH_LLAMA, 2),
            "malformed GGUF metadata: duplicate key 'general.architecture'",
            id="duplicate-key",
        ),
        pytest.param(_handmade(b"", 0), "no general.architecture in the metadata", id="no-architecture"),
        pytest.param(
            _handmade(_gguf_string("deep") + _nested_arrays(5000, length=1), 1),
            "malformed GGUF metadata: key 'deep' nests arrays more than 16 deep",
            id="nested-arrays",
        ),
        pytest.param(
            _handmade(_gguf_string("deep") + _nested_arrays(5000, length=MAX_LISTED_ARRAY + 1), 1),
            "malformed GGUF metadata: key 'deep' nests arrays more than 16 deep",
            id="nested-arrays-skipped",
        ),
    ],
)
def test_unusable_files_raise_gguf_error_saying_why(
    tmp_path: Path, tiny_gguf: Path, make: Callable[[Path, Path], Path], reason: str
) -> None:
    path = make(tmp_path, tiny_gguf)

    with pytest.raises(GGUFError) as raised:
        read_gguf_info(path)

    assert isinstance(raised.value, ValueError)
    assert raised.value.path == path
    assert raised.value.reason.startswith(reason)


def test_gguf_metadata_raises_the_same_errors(tmp_path: Path) -> None:
    with pytest.raises(GGUFError, match="not a GGUF file"):
        gguf_metadata(write_not_gguf(tmp_path / "x.gguf"))


def test_info_is_a_frozen_value(tiny_gguf: Path) -> None:
    info = read_gguf_info(tiny_gguf)

    assert info == read_gguf_info(tiny_gguf)
    with pytest.raises(AttributeError):
        info.file_type = "Q4_0"  # type: ignore[misc]
    assert isinstance(info, GGUFInfo)


def _write(writer: gguf.GGUFWriter) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
