"""What a GGUF file says about itself: architecture, quantization, size, context, chat template.

Pure apart from reading the one file, and cheap: the file is memory-mapped and only the header, the
metadata and the tensor index are read; tensor data is never touched, only bounds-checked.

Why not `gguf.GGUFReader`: it builds a numpy view for every element of every metadata array, which
takes about 11 s for Gemma 3's 262,144-token vocabulary. Here long arrays are skipped over rather
than decoded (they are summarised as "[n items]" anyway), which takes a fraction of a second. The
format's constants (value types, quantization block sizes, file types, key names, supported
versions) still come from the `gguf` package, and the tests check this reader against GGUFReader.

Every way a file can be unusable (missing, not a GGUF, a version we cannot read, truncated,
malformed) comes out as `GGUFError` with a reason that says which.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from gguf import (
    GGML_QUANT_SIZES,
    GGUF_DEFAULT_ALIGNMENT,
    READER_SUPPORTED_VERSIONS,
    GGMLQuantizationType,
    GGUFValueType,
    Keys,
    LlamaFileType,
)

from modelyard.errors import GGUFError

GGUF_MAGIC = b"GGUF"
# Arrays longer than this (token lists, merges, scores) are summarised in `gguf_metadata`.
MAX_LISTED_ARRAY = 64
UNQUANTIZED_FILE_TYPES = frozenset({"F32", "F16", "BF16"})
GGML_MAX_DIMS = 4  # llama.cpp refuses tensors with more dimensions
POOLING_NONE = 0  # `<arch>.pooling_type` as llama.cpp's LLAMA_POOLING_TYPE_NONE: no pooling declared

_SCALAR_FORMATS = {
    GGUFValueType.UINT8: "B",
    GGUFValueType.INT8: "b",
    GGUFValueType.UINT16: "H",
    GGUFValueType.INT16: "h",
    GGUFValueType.UINT32: "I",
    GGUFValueType.INT32: "i",
    GGUFValueType.FLOAT32: "f",
    GGUFValueType.BOOL: "?",
    GGUFValueType.UINT64: "Q",
    GGUFValueType.INT64: "q",
    GGUFValueType.FLOAT64: "d",
}


@dataclass(frozen=True)
class GGUFInfo:
    architecture: str  # general.architecture
    general_type: str  # general.type: "model" when absent, "adapter" for a LoRA
    file_type: str  # quantization, e.g. "Q4_K_M", "F16"; "unknown" when it cannot be told
    parameter_count: int  # sum of tensor element counts (for an adapter: the adapter's own)
    parameter_size: str  # human form as Ollama prints it: "268.10M", "8.0B"
    context_length: int | None
    embedding_length: int | None
    block_count: int | None
    chat_template: str | None
    adapter_type: str | None  # "lora" for a LoRA adapter
    adapter_alpha: float | None
    size_bytes: int
    tensor_count: int
    split_count: int = 1  # split.count: the files a model split by llama.cpp's gguf-split spans


@dataclass(frozen=True)
class TensorInfo:
    name: str
    ggml_type: GGMLQuantizationType
    shape: tuple[int, ...]  # ggml order: innermost (row length) first
    n_elements: int
    n_bytes: int
    data_offset: int  # from the start of the file


@dataclass(frozen=True)
class GGUFContents:
    """Everything in a GGUF but the tensor data: for memory estimates, which need every tensor's size."""

    version: int
    metadata: dict[str, object]
    tensors: tuple[TensorInfo, ...]
    size_bytes: int


def read_gguf_info(path: Path) -> GGUFInfo:
    path = Path(path)
    contents = _read(path)
    metadata = contents.metadata
    architecture = metadata.get(Keys.General.ARCHITECTURE)
    if not isinstance(architecture, str) or not architecture:
        raise GGUFError(path, f"no {Keys.General.ARCHITECTURE} in the metadata; llama.cpp cannot load it")
    parameter_count = sum(tensor.n_elements for tensor in contents.tensors)
    return GGUFInfo(
        architecture=architecture,
        general_type=_str_or_none(metadata, Keys.General.TYPE) or "model",
        file_type=_file_type(metadata.get(Keys.General.FILE_TYPE), contents.tensors),
        parameter_count=parameter_count,
        parameter_size=human_parameter_count(parameter_count),
        context_length=_int_or_none(metadata, Keys.LLM.CONTEXT_LENGTH.format(arch=architecture)),
        embedding_length=_int_or_none(metadata, Keys.LLM.EMBEDDING_LENGTH.format(arch=architecture)),
        block_count=_int_or_none(metadata, Keys.LLM.BLOCK_COUNT.format(arch=architecture)),
        chat_template=_str_or_none(metadata, Keys.Tokenizer.CHAT_TEMPLATE),
        adapter_type=_str_or_none(metadata, Keys.Adapter.TYPE),
        adapter_alpha=_float_or_none(metadata, Keys.Adapter.LORA_ALPHA),
        size_bytes=contents.size_bytes,
        tensor_count=len(contents.tensors),
        split_count=_int_or_none(metadata, Keys.Split.LLM_KV_SPLIT_COUNT) or 1,
    )


def read_gguf(path: Path, *, whole_arrays: bool = False) -> GGUFContents:
    """Metadata and the tensor index (names, types, shapes, byte sizes), validated as above.
    Metadata arrays longer than MAX_LISTED_ARRAY are summarised as "[n items]" unless
    `whole_arrays` (a vocabulary of 262,144 tokens takes about a second to decode)."""
    return _read(Path(path), None if whole_arrays else MAX_LISTED_ARRAY)


def gguf_metadata(path: Path) -> dict[str, object]:
    """All metadata key/value pairs as plain Python values, for `show` and the API's model_info.

    Strings are decoded, arrays of up to MAX_LISTED_ARRAY elements are lists, longer ones are
    summarised as "[n items]".
    """
    return _read(Path(path)).metadata


def is_quantized(file_type: str) -> bool:
    # "unknown" counts as quantized: the question callers ask is "may I quantize this?", and the
    # safe answer for a file we cannot classify is no.
    return file_type.upper() not in UNQUANTIZED_FILE_TYPES


def human_parameter_count(count: int) -> str:
    """Ollama's format.HumanNumber: whole numbers bare ("7B"), else one decimal for B, two for M."""
    for scale, suffix, decimals in ((1_000_000_000, "B", 1), (1_000_000, "M", 2)):
        if count >= scale:
            if count % scale == 0:
                return f"{count // scale}{suffix}"
            return f"{count / scale:.{decimals}f}{suffix}"
    if count >= 1_000:
        return f"{count / 1_000:.0f}K"
    return str(count)


# --- reading the file ------------------------------------------------------------------------------


class _PastEndOfFile(Exception):
    def __init__(self, end: int) -> None:
        self.end = end


class _Malformed(Exception):
    pass


class _Cursor:
    """Reads GGUF values in order from a buffer, refusing to read past its end."""

    def __init__(self, buffer: mmap.mmap, byte_order: str, offset: int) -> None:
        self.buffer = buffer
        self.byte_order = byte_order
        self.offset = offset
        self._structs: dict[str, struct.Struct] = {}

    def scalar(self, fmt: str) -> int | float | bool:
        packed = self._structs.get(fmt)
        if packed is None:
            packed = self._structs[fmt] = struct.Struct(self.byte_order + fmt)
        self._need(packed.size)
        (value,) = packed.unpack_from(self.buffer, self.offset)
        self.offset += packed.size
        return value

    def u32(self) -> int:
        return int(self.scalar("I"))

    def u64(self) -> int:
        return int(self.scalar("Q"))

    def string(self) -> str:
        length = self.u64()
        self._need(length)
        raw = self.buffer[self.offset : self.offset + length]
        self.offset += length
        # GGUF strings should be UTF-8; one stray byte must not make a whole model unreadable.
        return raw.decode("utf-8", errors="replace")

    def skip_string(self) -> None:
        length = self.u64()
        self._need(length)
        self.offset += length

    def skip(self, n_bytes: int) -> None:
        self._need(n_bytes)
        self.offset += n_bytes

    def _need(self, n_bytes: int) -> None:
        end = self.offset + n_bytes
        if end > len(self.buffer):
            raise _PastEndOfFile(end)


def _read(path: Path, max_listed: int | None = MAX_LISTED_ARRAY) -> GGUFContents:
    with _mapped(path) as buffer:
        size_bytes = len(buffer)
        version, byte_order = _check_preamble(path, buffer)
        cursor = _Cursor(buffer, byte_order, offset=len(GGUF_MAGIC) + 4)
        part = "header"
        try:
            tensor_count, kv_count = cursor.u64(), cursor.u64()
            part = "metadata"
            metadata = _read_metadata(cursor, kv_count, max_listed)
            part = "tensor index"
            tensors = _read_tensor_index(cursor, tensor_count, _alignment(metadata))
        except _PastEndOfFile as exc:
            raise GGUFError(path, _truncated_reason(f"the {part}", exc.end, size_bytes)) from None
        except _Malformed as exc:
            raise GGUFError(path, f"malformed GGUF {part}: {exc}") from None
    _check_tensor_data_in_bounds(path, tensors, size_bytes)
    return GGUFContents(version, metadata, tensors, size_bytes)


@contextmanager
def _mapped(path: Path) -> Iterator[mmap.mmap]:
    with _open_for_reading(path) as file:
        if os.fstat(file.fileno()).st_size < len(GGUF_MAGIC):
            # mmap cannot map an empty file; what there is cannot be a GGUF either way.
            raise GGUFError(path, f"not a GGUF file (magic {file.read()!r}, expected {GGUF_MAGIC!r})")
        with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as buffer:
            yield buffer


def _open_for_reading(path: Path) -> BinaryIO:
    try:
        return path.open("rb")
    except FileNotFoundError:
        raise GGUFError(path, "file not found") from None
    except IsADirectoryError:
        raise GGUFError(path, "is a directory, not a GGUF file") from None
    except PermissionError as exc:
        raise GGUFError(path, f"cannot read the file ({exc.strerror})") from None


def _check_preamble(path: Path, buffer: mmap.mmap) -> tuple[int, str]:
    """Magic and version; returns the version and the struct byte order of the file."""
    magic = buffer[: len(GGUF_MAGIC)]
    if magic != GGUF_MAGIC:
        raise GGUFError(path, f"not a GGUF file (magic {magic!r}, expected {GGUF_MAGIC!r})")
    if len(buffer) < len(GGUF_MAGIC) + 4:
        raise GGUFError(path, _truncated_reason("the header", len(GGUF_MAGIC) + 4, len(buffer)))
    byte_order = "<"
    (version,) = struct.unpack_from(byte_order + "I", buffer, len(GGUF_MAGIC))
    if version & 0xFFFF == 0:
        # Written for a big-endian machine (the version reads as 0x00030000); llama.cpp's convert
        # scripts can produce these and GGUFReader reads them, so read them too.
        byte_order = ">"
        (version,) = struct.unpack_from(byte_order + "I", buffer, len(GGUF_MAGIC))
    if version not in READER_SUPPORTED_VERSIONS:
        supported = " and ".join(str(v) for v in READER_SUPPORTED_VERSIONS)
        raise GGUFError(path, f"unsupported GGUF version {version} (this reader handles {supported})")
    return version, byte_order


def _read_metadata(cursor: _Cursor, kv_count: int, max_listed: int | None) -> dict[str, object]:
    metadata: dict[str, object] = {}
    for _ in range(kv_count):
        key = cursor.string()
        if key in metadata:
            raise _Malformed(f"duplicate key {key!r}")  # llama.cpp refuses these too
        metadata[key] = _read_value(cursor, _value_type(cursor.u32(), key), key, max_listed)
    return metadata


def _read_value(
    cursor: _Cursor, value_type: GGUFValueType, key: str, max_listed: int | None, depth: int = 0
) -> object:
    if value_type == GGUFValueType.STRING:
        return cursor.string()
    if value_type == GGUFValueType.ARRAY:
        element_type = _value_type(cursor.u32(), key)
        if element_type == GGUFValueType.ARRAY:
            _check_depth(depth + 1, key)
        length = cursor.u64()
        if max_listed is not None and length > max_listed:
            _skip_values(cursor, element_type, length, key, depth)
            return f"[{length} items]"
        if length > len(cursor.buffer):  # each element takes a byte at least: a length no file holds
            raise _PastEndOfFile(len(cursor.buffer) + 1)
        return [_read_value(cursor, element_type, key, max_listed, depth + 1) for _ in range(length)]
    value = cursor.scalar(_SCALAR_FORMATS[value_type])
    if value_type == GGUFValueType.FLOAT32:
        # The shortest decimal that is this float32 (1e-05, not 9.999999747378752e-06), as
        # llama.cpp prints it.
        return float(str(np.float32(value)))
    return value


def _skip_values(cursor: _Cursor, value_type: GGUFValueType, count: int, key: str, depth: int = 0) -> None:
    if value_type in _SCALAR_FORMATS:
        cursor.skip(count * struct.calcsize(_SCALAR_FORMATS[value_type]))
    elif value_type == GGUFValueType.STRING:
        for _ in range(count):
            cursor.skip_string()
    else:  # arrays of arrays: rare, but legal
        _check_depth(depth + 1, key)
        for _ in range(count):
            element_type = _value_type(cursor.u32(), key)
            _skip_values(cursor, element_type, cursor.u64(), key, depth + 1)


# Arrays of arrays are legal but rare (one level in practice); a crafted file nesting thousands of
# levels deep would otherwise exhaust Python's stack.
MAX_ARRAY_NESTING = 16


def _check_depth(depth: int, key: str) -> None:
    if depth > MAX_ARRAY_NESTING:
        raise _Malformed(f"key {key!r} nests arrays more than {MAX_ARRAY_NESTING} deep")


def _value_type(raw: int, key: str) -> GGUFValueType:
    try:
        return GGUFValueType(raw)
    except ValueError:
        raise _Malformed(f"unknown value type {raw} for key {key!r}") from None


def _alignment(metadata: dict[str, object]) -> int:
    alignment = metadata.get(Keys.General.ALIGNMENT, GGUF_DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise _Malformed(f"{Keys.General.ALIGNMENT} must be a power of two, not {alignment!r}")
    return alignment


def _read_tensor_index(cursor: _Cursor, tensor_count: int, alignment: int) -> tuple[TensorInfo, ...]:
    entries = []
    for _ in range(tensor_count):
        name = cursor.string()
        n_dims = cursor.u32()
        if n_dims > GGML_MAX_DIMS:
            raise _Malformed(f"tensor {name!r} has {n_dims} dimensions (at most {GGML_MAX_DIMS})")
        shape = tuple(cursor.u64() for _ in range(n_dims))
        ggml_type = _tensor_type(cursor.u32(), name)
        entries.append((name, shape, ggml_type, cursor.u64()))
    # Tensor data starts at the first aligned offset after the index.
    data_start = -(-cursor.offset // alignment) * alignment
    return tuple(
        _tensor_info(name, shape, ggml_type, data_start + offset)
        for name, shape, ggml_type, offset in entries
    )


def _tensor_type(raw: int, name: str) -> GGMLQuantizationType:
    try:
        return GGMLQuantizationType(raw)
    except ValueError:
        raise _Malformed(f"tensor {name!r} has unknown type {raw} (newer than this gguf package?)") from None


def _tensor_info(
    name: str, shape: tuple[int, ...], ggml_type: GGMLQuantizationType, data_offset: int
) -> TensorInfo:
    n_elements = 1
    for dim in shape:
        n_elements *= dim
    block_size, type_size = GGML_QUANT_SIZES[ggml_type]
    if shape and shape[0] % block_size:
        raise _Malformed(f"tensor {name!r} rows of {shape[0]} are not whole {ggml_type.name} blocks")
    n_bytes = n_elements // block_size * type_size
    return TensorInfo(name, ggml_type, shape, n_elements, n_bytes, data_offset)


def _check_tensor_data_in_bounds(path: Path, tensors: tuple[TensorInfo, ...], size_bytes: int) -> None:
    # A memory map never complains about data past the end of the file until something reads it
    # (and then with SIGBUS), so the check has to be explicit.
    for tensor in tensors:
        end = tensor.data_offset + tensor.n_bytes
        if end > size_bytes:
            raise GGUFError(path, _truncated_reason(f"the data of tensor {tensor.name!r}", end, size_bytes))


def _truncated_reason(part: str, end: int, size_bytes: int) -> str:
    return (
        f"truncated: {part} runs past the end of the file (needs {end} bytes, the file has {size_bytes}); "
        "download or copy it again"
    )


# --- interpreting the metadata ---------------------------------------------------------------------


def _int_or_none(metadata: dict[str, object], key: str) -> int | None:
    value = metadata.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _float_or_none(metadata: dict[str, object], key: str) -> float | None:
    value = metadata.get(key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _str_or_none(metadata: dict[str, object], key: str) -> str | None:
    value = metadata.get(key)
    return value if isinstance(value, str) else None


def _file_type(declared: object, tensors: tuple[TensorInfo, ...]) -> str:
    # A value this gguf package does not know (a newer file type) falls back to the tensors.
    if isinstance(declared, int) and declared in {member.value for member in LlamaFileType}:
        file_type = LlamaFileType(declared)
        if file_type is not LlamaFileType.GUESSED:
            return file_type.name.removeprefix("MOSTLY_").removeprefix("ALL_")
    return _dominant_tensor_type(tensors)


def _dominant_tensor_type(tensors: tuple[TensorInfo, ...]) -> str:
    """The type holding most weights, counting only matrices: norms and biases stay F32 anyway."""
    elements_by_type: Counter[GGMLQuantizationType] = Counter()
    for tensor in tensors:
        if len(tensor.shape) >= 2:
            elements_by_type[tensor.ggml_type] += tensor.n_elements
    if not elements_by_type:
        return "unknown"
    [(dominant, _)] = elements_by_type.most_common(1)
    return dominant.name
