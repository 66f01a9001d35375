"""Tiny random-weight GGUFs that llama.cpp really loads, for the fast tests.

`write_tiny_llama` writes a `llama`-architecture model (well under 1 MB) with a SentencePiece-style
vocabulary that can tokenize any text: specials, the 256 byte-fallback tokens and a few hundred
printable pieces with the `▁` space marker. `write_tiny_lora` writes a LoRA adapter for it in the
layout llama.cpp's `llama_adapter_lora_init` accepts. The rest write the broken files the error tests
need. The weights are random, so the text is nonsense, but it is text: the output rows of special,
byte and unused tokens are zero, so greedy decoding always prefers a printable piece and never
stops early on </s>.
"""

from __future__ import annotations

import shutil
import string
import struct
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

SPACE_MARKER = "▁"  # SentencePiece's visible space
UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
_COMMON_WORDS = (
    "the of and to in is it you that he was for on are as with his they at be this have from or one had "
    "by word but not what all were we when your can said there use an each which she do how their if will "
    "up other about out many then them these so some her would make like him into time has look two more "
    "write go see number no way could people my than first water been call who oil its now find long down "
    "day did get come made may part hello world model yard llama tiny test sky blue why"
)
WORDS = _COMMON_WORDS.split()

# LoRA targets: every projection llama.cpp routes through its LoRA-aware matmul in a llama block.
LORA_TARGETS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")

_FILE_TYPES = {
    "F32": (gguf.LlamaFileType.ALL_F32, np.float32),
    "F16": (gguf.LlamaFileType.MOSTLY_F16, np.float16),
}


@dataclass(frozen=True)
class TinyLlamaShape:
    n_vocab: int = 640
    n_embd: int = 64
    n_layer: int = 2
    n_head: int = 4
    n_head_kv: int = 2
    n_ff: int = 128
    n_ctx: int = 256

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def matrix_shapes(self, block: int) -> dict[str, tuple[int, int]]:
        """numpy shapes (rows = output features) of one block's weight matrices; ggml's ne is reversed."""
        n_q, n_kv = self.head_dim * self.n_head, self.head_dim * self.n_head_kv
        shapes = {
            "attn_q": (n_q, self.n_embd),
            "attn_k": (n_kv, self.n_embd),
            "attn_v": (n_kv, self.n_embd),
            "attn_output": (self.n_embd, n_q),
            "ffn_gate": (self.n_ff, self.n_embd),
            "ffn_up": (self.n_ff, self.n_embd),
            "ffn_down": (self.n_embd, self.n_ff),
        }
        return {f"blk.{block}.{name}.weight": shape for name, shape in shapes.items()}


def write_tiny_llama(
    path: Path,
    *,
    seed: int = 0,
    n_vocab: int = 640,
    n_embd: int = 64,
    n_layer: int = 2,
    n_head: int = 4,
    n_head_kv: int = 2,
    n_ff: int = 128,
    n_ctx: int = 256,
    file_type: str = "F32",
    chat_template: str | None = None,
    pooling: int | None = None,
    split_max_tensors: int = 0,
    add_bos: bool = True,
) -> Path:
    """`pooling`: a `<arch>.pooling_type` to declare (llama.cpp's enum: 0 none, 1 mean, …).
    `add_bos`: whether a tokenizer adds the BOS token (without, "" is no tokens).
    `split_max_tensors`: split into files of that many tensors as llama.cpp's gguf-split does
    (`path`'s stem gets -00001-of-0000N)."""
    shape = TinyLlamaShape(n_vocab, n_embd, n_layer, n_head, n_head_kv, n_ff, n_ctx)
    llama_file_type, matrix_dtype = _FILE_TYPES[file_type]
    tokens, scores, token_types = spm_vocab(n_vocab)
    rng = np.random.default_rng(seed)

    writer = gguf.GGUFWriter(path, "llama", split_max_tensors=split_max_tensors)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name("tiny-llama")
    writer.add_file_type(llama_file_type)
    writer.add_context_length(n_ctx)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    writer.add_rope_dimension_count(shape.head_dim)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(n_vocab)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(token_types)
    writer.add_bos_token_id(BOS_ID)
    writer.add_eos_token_id(EOS_ID)
    writer.add_unk_token_id(UNK_ID)
    writer.add_add_bos_token(add_bos)
    writer.add_add_eos_token(False)
    if chat_template is not None:
        writer.add_chat_template(chat_template)
    if pooling is not None:
        writer.add_pooling_type(gguf.PoolingType(pooling))

    def matrix(rows: int, cols: int) -> np.ndarray:
        # std 1/sqrt(fan_in) keeps activations O(1) through the blocks, so logits are not all ties.
        return (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(matrix_dtype)

    def norm() -> np.ndarray:
        return np.ones(n_embd, dtype=np.float32)  # 1-D tensors stay F32, as in every real GGUF

    output = matrix(n_vocab, n_embd)
    output[~_is_printable_piece(token_types)] = 0
    writer.add_tensor("token_embd.weight", matrix(n_vocab, n_embd))
    writer.add_tensor("output_norm.weight", norm())
    writer.add_tensor("output.weight", output)
    for block in range(n_layer):
        writer.add_tensor(f"blk.{block}.attn_norm.weight", norm())
        writer.add_tensor(f"blk.{block}.ffn_norm.weight", norm())
        for name, (rows, cols) in shape.matrix_shapes(block).items():
            writer.add_tensor(name, matrix(rows, cols))
    _write(writer)
    return Path(path)


def write_tiny_lora(
    path: Path,
    base: Path | TinyLlamaShape,
    *,
    seed: int = 0,
    rank: int = 4,
    alpha: float = 8.0,
    targets: tuple[str, ...] = LORA_TARGETS,
) -> Path:
    """A LoRA adapter for a tiny llama, laid out as convert_lora_to_gguf.py writes one.

    For a base weight of numpy shape (out, in), `.lora_a` is (rank, in) and `.lora_b` is
    (out, rank); llama.cpp adds (alpha / rank) * B @ A. B is non-zero (unlike a fresh PEFT
    adapter) so that applying the adapter changes the output.
    """
    shape = base if isinstance(base, TinyLlamaShape) else read_tiny_llama_shape(base)
    rng = np.random.default_rng(seed + 1_000_003)  # not the base's stream: A and B must not echo W
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_name("tiny-llama-lora")
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    for block in range(shape.n_layer):
        for name, (rows, cols) in shape.matrix_shapes(block).items():
            if name.split(".")[2] not in targets:
                continue
            # float32 explicitly: numpy promotes float32 / np.float64 to float64, and llama.cpp's CPU
            # backend crashes (SIGSEGV, no error) on an F64 LoRA tensor.
            lora_a = (rng.standard_normal((rank, cols)) / np.sqrt(cols)).astype(np.float32)
            lora_b = (rng.standard_normal((rows, rank)) / np.sqrt(rank)).astype(np.float32)
            writer.add_tensor(f"{name}.lora_a", lora_a)
            writer.add_tensor(f"{name}.lora_b", lora_b)
    _write(writer)
    return Path(path)


def read_tiny_llama_shape(path: Path) -> TinyLlamaShape:
    reader = gguf.GGUFReader(path)

    def value(key: str) -> int:
        field = reader.get_field(key)
        assert field is not None, f"{path} has no {key}"
        return int(field.contents())

    return TinyLlamaShape(
        n_vocab=value(gguf.Keys.LLM.VOCAB_SIZE.format(arch="llama")),
        n_embd=value(gguf.Keys.LLM.EMBEDDING_LENGTH.format(arch="llama")),
        n_layer=value(gguf.Keys.LLM.BLOCK_COUNT.format(arch="llama")),
        n_head=value(gguf.Keys.Attention.HEAD_COUNT.format(arch="llama")),
        n_head_kv=value(gguf.Keys.Attention.HEAD_COUNT_KV.format(arch="llama")),
        n_ff=value(gguf.Keys.LLM.FEED_FORWARD_LENGTH.format(arch="llama")),
        n_ctx=value(gguf.Keys.LLM.CONTEXT_LENGTH.format(arch="llama")),
    )


def spm_vocab(n_vocab: int) -> tuple[list[str], list[float], list[int]]:
    """A SentencePiece vocabulary: specials, byte fallback, characters, then `▁word` pieces.

    Every prefix of a word piece is in the vocabulary too, because llama.cpp's SPM tokenizer builds
    pieces by merging adjacent pairs and can only reach `▁hello` through `▁hell`. Scores favour
    longer pieces, as SentencePiece's log-probabilities do for frequent words.
    """
    tokens = ["<unk>", "<s>", "</s>"]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    tokens += [f"<0x{byte:02X}>" for byte in range(256)]
    types += [gguf.TokenType.BYTE] * 256
    pieces = dict.fromkeys([SPACE_MARKER, *string.ascii_letters, *string.digits, *string.punctuation])
    for word in WORDS:
        spelled = SPACE_MARKER + word
        pieces.update(dict.fromkeys(spelled[:end] for end in range(2, len(spelled) + 1)))
    tokens += list(pieces)
    types += [gguf.TokenType.NORMAL] * len(pieces)
    if len(tokens) > n_vocab:
        raise ValueError(f"n_vocab={n_vocab} is too small: the tokenizer alone needs {len(tokens)} tokens")
    unused = n_vocab - len(tokens)
    tokens += [f"<unused{index}>" for index in range(unused)]
    types += [gguf.TokenType.UNUSED] * unused
    scores = [
        float(len(token)) if kind == gguf.TokenType.NORMAL else 0.0
        for token, kind in zip(tokens, types, strict=True)
    ]
    return tokens, scores, [int(kind) for kind in types]


def _is_printable_piece(token_types: list[int]) -> np.ndarray:
    return np.array(token_types) == gguf.TokenType.NORMAL


def _write(writer: gguf.GGUFWriter) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


# --- broken files for the error tests ----------------------------------------------------------


def write_not_gguf(path: Path) -> Path:
    path.write_bytes(b"PK\x03\x04 this is a zip header, not a GGUF model\n" * 4)
    return path


def write_truncated_gguf(
    src: Path, dst: Path, keep_fraction: float = 0.5, *, keep_bytes: int | None = None
) -> Path:
    """The start of `src`: `keep_bytes` bytes if given (negative: counted from the end), else a fraction."""
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * keep_fraction) if keep_bytes is None else keep_bytes])
    return dst


def write_gguf_with_version(src: Path, dst: Path, version: int) -> Path:
    """A copy of `src` whose header claims another GGUF version (bytes 4..8, little-endian)."""
    shutil.copyfile(src, dst)
    with dst.open("r+b") as file:
        file.seek(4)
        file.write(struct.pack("<I", version))
    return dst
