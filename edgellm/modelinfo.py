"""Read what the planner needs from a GGUF file's header, without loading any weights.

The reader also guards llama.cpp: a truncated or corrupt file can crash the native loader, so a
file only reaches llama.cpp after its header parses and every tensor's data lies inside the file.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgellm.errors import ModelFileError

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32

# GGUF metadata value types (gguf spec).
_SCALARS: dict[int, str] = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9

# ggml tensor types: id -> (name, elements per block, bytes per block) (ggml.h, ggml.c type_traits)
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22), 7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 36),
    10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292), 16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74),
    18: ("IQ3_XXS", 256, 98), 19: ("IQ1_S", 256, 50), 20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82), 23: ("IQ4_XS", 256, 136), 24: ("I8", 1, 1), 25: ("I16", 1, 2),
    26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8), 29: ("IQ1_M", 256, 56),
    30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66), 39: ("MXFP4", 32, 17),
}

# llama_ftype (llama.h) -> the name people use for the quantization.
FILE_TYPES: dict[int, str] = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
    11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S",
    17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS",
    23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S",
    29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0", 37: "TQ2_0", 38: "MXFP4",
}

# Models edgellm can generate text with: decoder-only transformers whose KV cache follows the
# standard layout (n_layers x n_head_kv x head_dim). Others load in llama.cpp but the planner's
# memory estimate would be wrong, so they are refused with a clear message.
SUPPORTED_ARCHS = frozenset({
    "llama", "qwen2", "qwen3", "qwen2moe", "qwen3moe", "phi3", "gemma", "gemma2", "gemma3",
    "mistral3", "granite", "olmo", "olmo2", "starcoder2", "stablelm", "internlm2", "smollm3",
    "exaone", "deepseek", "command-r", "cohere2", "minicpm", "glm4", "ernie4_5", "falcon",
})


@dataclass(frozen=True)
class ModelShape:
    """The hyperparameters that decide a decoder-only model's tensors (head_dim = n_embd // n_head).

    The catalog describes its models with it (so plans work before a download) and the synthetic
    builder writes GGUF files of it.
    """

    n_layers: int
    n_embd: int
    n_head: int
    n_head_kv: int
    n_ff: int
    n_vocab: int
    arch: str = "qwen2"
    context_length: int = 4096
    rope_theta: float = 10000.0
    tied_embeddings: bool = False

    def __post_init__(self) -> None:
        if min(self.n_layers, self.n_embd, self.n_head, self.n_head_kv, self.n_ff, self.n_vocab) <= 0:
            raise ValueError("every size must be positive")
        if self.n_embd % self.n_head or self.n_head % self.n_head_kv:
            raise ValueError("n_embd must be a multiple of n_head, and n_head of n_head_kv")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def n_embd_kv(self) -> int:
        return self.head_dim * self.n_head_kv

    def parameter_count(self) -> int:
        """Weights in the model: embeddings (+ untied output), attention, FFN and norms."""
        per_layer = (
            2 * self.n_embd * self.n_embd  # q and o projections
            + 2 * self.n_embd * self.n_embd_kv  # k and v projections
            + 3 * self.n_embd * self.n_ff  # gate, up, down
            + 2 * self.n_embd  # norms
        )
        embeddings = self.n_vocab * self.n_embd * (1 if self.tied_embeddings else 2)
        return embeddings + self.n_layers * per_layer + self.n_embd


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    type_name: str
    offset: int
    n_bytes: int


@dataclass
class ModelInfo:
    """The architecture facts of a model, from a GGUF header or from the catalog."""

    arch: str
    n_layers: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim_k: int
    head_dim_v: int
    n_ff: int
    n_vocab: int
    context_length: int
    quant: str
    weights_bytes: int
    # Bytes the CPU streams from memory per generated token: every weight except the token
    # embedding table, of which one row is looked up (unless the output layer reuses it).
    bytes_per_token: int
    name: str = ""
    path: Path | None = None
    file_size: int = 0
    data_offset: int = 0
    tied_embeddings: bool = False
    chat_template: str | None = None
    n_tensors: int = 0
    tensor_types: dict[str, int] = field(default_factory=dict)

    def kv_bytes_per_token(self, kv_type: str = "f16") -> float:
        return self.n_layers * self.n_head_kv * (self.head_dim_k + self.head_dim_v) * KV_BYTES_PER_ELEMENT[kv_type]

    @property
    def thinks(self) -> bool:
        """Whether the chat template speaks of <think> blocks (R1 distills and other reasoners)."""
        return bool(self.chat_template and "</think>" in self.chat_template)


KV_BYTES_PER_ELEMENT = {"f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}


class _Cursor:
    def __init__(self, buffer: Any, size: int) -> None:
        self.buffer, self.size, self.pos = buffer, size, 0

    def take(self, fmt: str) -> Any:
        width = struct.calcsize(fmt)
        if self.pos + width > self.size:
            raise EOFError
        (value,) = struct.unpack_from(fmt, self.buffer, self.pos)
        self.pos += width
        return value

    def string(self) -> str:
        length = self.take("<Q")
        if self.pos + length > self.size:
            raise EOFError
        raw = bytes(self.buffer[self.pos : self.pos + length])
        self.pos += length
        return raw.decode("utf-8", "replace")

    def skip_string(self) -> None:
        length = self.take("<Q")
        self.pos += length
        if self.pos > self.size:
            raise EOFError

    def value(self, kind: int, keep_arrays: bool) -> Any:
        if kind in _SCALARS:
            return self.take(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item_kind = self.take("<I")
            count = self.take("<Q")
            if not keep_arrays:
                # Vocabularies have ~150k strings; skip them without building Python objects.
                if item_kind == _STRING:
                    for _ in range(count):
                        self.skip_string()
                elif item_kind in _SCALARS:
                    self.pos += struct.calcsize(_SCALARS[item_kind]) * count
                    if self.pos > self.size:
                        raise EOFError
                else:
                    for _ in range(count):
                        self.value(item_kind, False)
                return _ArrayLength(count)
            return [self.value(item_kind, True) for _ in range(count)]
        raise ValueError(f"unknown metadata value type {kind}")


class _ArrayLength(int):
    """Stands in for a skipped array: only its length is kept."""


def _tensor_bytes(shape: tuple[int, ...], type_id: int) -> int:
    if type_id not in GGML_TYPES:
        raise ValueError(f"unknown tensor type {type_id}")
    _, block, size = GGML_TYPES[type_id]
    elements = 1
    for dim in shape:
        elements *= dim
    return elements // block * size


def read_gguf(path: Path | str) -> ModelInfo:
    """Parse a GGUF header; raise ModelFileError (one line) for anything llama.cpp must not see."""
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"{path}: no such file", hint="check the path, or see `edgellm ls` for downloaded models")
    if path.is_dir():
        raise ModelFileError(f"{path}: is a directory, not a .gguf file")
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    with handle:
        size = path.stat().st_size
        if size < 24:
            raise ModelFileError(f"{path}: not a GGUF file ({size} bytes)")
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buffer:
            if buffer[:4] != GGUF_MAGIC:
                raise ModelFileError(
                    f"{path}: not a GGUF file (starts with {bytes(buffer[:4])!r})",
                    hint="edgellm runs GGUF models; convert others with llama.cpp's convert_hf_to_gguf.py",
                )
            try:
                return _parse(path, buffer, size)
            except (EOFError, struct.error):
                raise ModelFileError(
                    f"{path}: truncated GGUF header ({size} bytes)",
                    hint="the download was probably interrupted: delete it and pull again",
                ) from None
            except (ValueError, UnicodeError, OverflowError, MemoryError) as exc:
                raise ModelFileError(f"{path}: corrupt GGUF header: {exc}") from None


def _parse(path: Path, buffer: Any, size: int) -> ModelInfo:
    cursor = _Cursor(buffer, size)
    cursor.pos = 4
    version = cursor.take("<I")
    if version not in (2, 3):
        raise ValueError(f"unsupported GGUF version {version}")
    n_tensors = cursor.take("<Q")
    n_kv = cursor.take("<Q")
    if n_tensors > 1_000_000 or n_kv > 1_000_000:
        raise ValueError(f"implausible counts ({n_tensors} tensors, {n_kv} keys)")
    meta: dict[str, Any] = {}
    for _ in range(n_kv):
        key = cursor.string()
        kind = cursor.take("<I")
        meta[key] = cursor.value(kind, keep_arrays=False)
    tensors: list[TensorInfo] = []
    for _ in range(n_tensors):
        name = cursor.string()
        n_dims = cursor.take("<I")
        if n_dims > 8:
            raise ValueError(f"tensor {name} has {n_dims} dimensions")
        shape = tuple(cursor.take("<Q") for _ in range(n_dims))
        type_id = cursor.take("<I")
        offset = cursor.take("<Q")
        tensors.append(TensorInfo(name, shape, GGML_TYPES.get(type_id, (str(type_id),))[0], offset, _tensor_bytes(shape, type_id)))
    alignment = int(meta.get("general.alignment", DEFAULT_ALIGNMENT)) or DEFAULT_ALIGNMENT
    data_offset = (cursor.pos + alignment - 1) // alignment * alignment
    end_of_data = max((t.offset + t.n_bytes for t in tensors), default=0) + data_offset
    if end_of_data > size:
        missing = end_of_data - size
        raise ModelFileError(
            f"{path}: truncated GGUF: tensor data needs {end_of_data:,} bytes but the file has {size:,} ({missing:,} missing)",
            hint="the download was probably interrupted: delete it and pull again",
        )
    return _model_info(path, meta, tensors, size, data_offset)


def _model_info(path: Path, meta: dict[str, Any], tensors: list[TensorInfo], size: int, data_offset: int) -> ModelInfo:
    arch = str(meta.get("general.architecture", "")) or "unknown"
    if arch not in SUPPORTED_ARCHS:
        raise ModelFileError(
            f"{path}: unsupported architecture '{arch}'",
            hint="edgellm runs decoder-only text models (llama, qwen2, qwen3, phi3, gemma, ...)",
        )

    def need(key: str) -> int:
        value = meta.get(f"{arch}.{key}")
        if isinstance(value, _ArrayLength) or not isinstance(value, (int, float)):
            # Some models store per-layer head counts as arrays; edgellm plans with the maximum.
            if isinstance(value, list) and value:
                return int(max(value))
            raise ModelFileError(f"{path}: GGUF header lacks '{arch}.{key}'")
        return int(value)

    n_embd = need("embedding_length")
    n_head = need("attention.head_count")
    n_head_kv = int(meta.get(f"{arch}.attention.head_count_kv", n_head))
    head_dim_k = int(meta.get(f"{arch}.attention.key_length", n_embd // max(n_head, 1)))
    head_dim_v = int(meta.get(f"{arch}.attention.value_length", head_dim_k))
    tokens = meta.get("tokenizer.ggml.tokens")
    names = {t.name for t in tensors}
    weights = sum(t.n_bytes for t in tensors)
    embedding = sum(t.n_bytes for t in tensors if t.name == "token_embd.weight")
    tied = "output.weight" not in names
    file_type = meta.get("general.file_type")
    quant = FILE_TYPES.get(int(file_type) & ~1024, f"type {file_type}") if isinstance(file_type, int) else _guess_quant(tensors)
    template = meta.get("tokenizer.chat_template")
    return ModelInfo(
        arch=arch,
        name=str(meta.get("general.name", path.stem)),
        n_layers=need("block_count"),
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim_k=head_dim_k,
        head_dim_v=head_dim_v,
        n_ff=int(meta.get(f"{arch}.feed_forward_length", 0) or 0),
        n_vocab=int(tokens) if tokens is not None else int(meta.get(f"{arch}.vocab_size", 0) or 0),
        context_length=int(meta.get(f"{arch}.context_length", 4096)),
        quant=quant,
        weights_bytes=weights,
        bytes_per_token=weights if tied else weights - embedding,
        path=path,
        file_size=size,
        data_offset=data_offset,
        tied_embeddings=tied,
        chat_template=template if isinstance(template, str) else None,
        n_tensors=len(tensors),
    )


def _guess_quant(tensors: list[TensorInfo]) -> str:
    counts: dict[str, int] = {}
    for tensor in tensors:
        if len(tensor.shape) >= 2:
            counts[tensor.type_name] = counts.get(tensor.type_name, 0) + tensor.n_bytes
    return max(counts, key=counts.__getitem__) if counts else "unknown"
