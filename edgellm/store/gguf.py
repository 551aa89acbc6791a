"""Read what the planner needs from a GGUF file's header, without loading any weights.

The reader also guards llama.cpp: a truncated or corrupt file can crash the native loader, so a
file only reaches llama.cpp after its header parses and every tensor's data lies inside the file.
"""

from __future__ import annotations

import errno
import math
import mmap
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgellm.errors import ModelFileError
from edgellm.files import NotARegularFileError, open_regular_file

GGUF_MAGIC = b"GGUF"
GGUF_MIN_BYTES = 24  # magic, version, tensor count and key count
DEFAULT_ALIGNMENT = 32

# GGUF metadata value types (gguf spec).
_SCALARS: dict[int, str] = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_UINT32, _INT32, _BOOL = 4, 5, 7
_TOKENS = "tokenizer.ggml.tokens"
_U64 = struct.Struct("<Q")
_TYPE_NAMES = {0: "uint8", 1: "int8", 2: "uint16", 3: "int16", 4: "uint32", 5: "int32", 6: "float32", 7: "bool",
               8: "string", 9: "array", 10: "uint64", 11: "int64", 12: "float64"}

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
    n_params: int = 0  # weights in the file (elements of every tensor); 0: unknown (a catalog model)
    tensor_types: dict[str, int] = field(default_factory=dict)
    # Where the weights sit, for splitting layers across boards (--rpc): blk.N.* per layer, the
    # input embedding table (always on the main board) and the output layer (norm + lm head; a
    # model with tied embeddings gets a copy of the embedding table there, as llama.cpp makes one).
    layer_bytes: tuple[int, ...] = ()
    input_bytes: int = 0
    output_bytes: int = 0

    def layer_layout(self) -> tuple[int, list[int], int]:
        """(input bytes, bytes of each repeating layer, output bytes); estimated evenly when the
        header's tensors are unknown (a catalog model not downloaded yet)."""
        if len(self.layer_bytes) == self.n_layers and self.n_layers:
            return self.input_bytes, list(self.layer_bytes), self.output_bytes
        embedding = self.input_bytes or max(self.weights_bytes - self.bytes_per_token, 0)
        output = self.output_bytes or embedding
        per_layer = max(self.weights_bytes - embedding - (0 if self.tied_embeddings else output), 0) // max(self.n_layers, 1)
        return embedding, [per_layer] * self.n_layers, output

    def kv_bytes_per_token(self, kv_type: str = "f16") -> float:
        return self.n_layers * self.n_head_kv * (self.head_dim_k + self.head_dim_v) * KV_BYTES_PER_ELEMENT[kv_type]

    @property
    def thinks(self) -> bool:
        """Whether the chat template speaks of <think> blocks (R1 distills and other reasoners)."""
        return bool(self.chat_template and "</think>" in self.chat_template)


KV_BYTES_PER_ELEMENT = {"f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}

# Limits llama.cpp enforces with GGML_ASSERT (an abort, no message) while loading hyperparameters
# (src/llama-hparams.h, src/llama-model.cpp load_hparams): checked here so they become errors.
LLAMA_MAX_LAYERS = 512
LLAMA_MAX_EXPERTS = 1024
ROPE_SCALING_TYPES = ("none", "linear", "yarn", "longrope")
# llama.cpp multiplies sizes into int64 tensor dimensions and asserts each is >= 1; below 2^24
# (16.7M; real models stay under 300k) no product of two or three of them can overflow.
MAX_DIMENSION = 1 << 24
# Architectures whose llama.cpp graph asserts that RoPE spans the whole head (n_rot == head_dim,
# src/models/<arch>.cpp); the others (phi3, stablelm, gemma, ...) may rotate part of it.
_ROPE_SPANS_HEAD = frozenset({
    "llama", "qwen2", "qwen3", "qwen2moe", "qwen3moe", "mistral3", "granite", "olmo", "olmo2", "starcoder2",
    "internlm2", "smollm3", "exaone", "deepseek", "ernie4_5", "falcon",
})


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

    def unique_strings(self, count: int, key: str) -> None:
        """Skip `count` strings, refusing a repeated one (llama.cpp asserts its vocabulary has none).

        Locals instead of take(): this runs over ~150k tokens on every load.
        """
        if count > MAX_DIMENSION:
            raise ValueError(f"{key} has {count:,} entries")
        buffer, pos, unpack_length = self.buffer, self.pos, _U64.unpack_from
        items = []
        for _ in range(count):
            (length,) = unpack_length(buffer, pos)  # struct.error past the end: a truncated file
            pos += 8
            items.append(buffer[pos : pos + length])
            pos += length
        if pos > self.size:
            raise EOFError
        self.pos = pos
        if len(set(items)) == len(items):
            return
        seen: set[bytes] = set()
        for item in items:
            if item in seen:
                raise ValueError(f"{key} lists {item.decode('utf-8', 'replace')!r} twice")
            seen.add(item)

    def value(self, kind: int, keep_arrays: bool, *, unique: str | None = None) -> Any:
        """The value of a `kind`; arrays are skipped unless keep_arrays (`unique`: a key whose
        strings must not repeat)."""
        if kind in _SCALARS:
            return self.take(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item_kind = self.take("<I")
            count = self.take("<Q")
            start = self.pos
            if not keep_arrays:
                # Vocabularies have ~150k strings; skip them without building Python objects.
                if item_kind == _STRING and unique:
                    self.unique_strings(count, unique)
                elif item_kind == _STRING:
                    for _ in range(count):
                        self.skip_string()
                elif item_kind in _SCALARS:
                    self.pos += struct.calcsize(_SCALARS[item_kind]) * count
                    if self.pos > self.size:
                        raise EOFError
                else:
                    for _ in range(count):
                        self.value(item_kind, False)
                return _ArrayLength(count, item_kind, start)
            return [self.value(item_kind, True) for _ in range(count)]
        raise ValueError(f"unknown metadata value type {kind}")

    def numbers(self, array: _ArrayLength) -> list[int | float]:
        """The elements of a skipped array of scalars (read on demand: per-layer head counts)."""
        fmt = _SCALARS[array.item_kind]
        width = struct.calcsize(fmt)
        return [struct.unpack_from(fmt, self.buffer, array.offset + i * width)[0] for i in range(array)]


class _ArrayLength(int):
    """Stands in for a skipped array: its length, plus its element type and where the elements start."""

    item_kind: int
    offset: int

    def __new__(cls, count: int, item_kind: int, offset: int) -> _ArrayLength:  # noqa: PYI034  (typing.Self needs Python 3.11)
        self = super().__new__(cls, count)
        self.item_kind, self.offset = item_kind, offset
        return self


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
    fd = _open_model(path)
    with os.fdopen(fd, "rb") as handle:
        size = os.fstat(fd).st_size
        if size < GGUF_MIN_BYTES:
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


def _open_model(path: Path) -> int:
    """A descriptor of the model file; only regular files (a FIFO would block the open forever)."""
    try:
        return open_regular_file(path)
    except NotARegularFileError as exc:
        if exc.kind == "a directory":
            raise ModelFileError(f"{path}: is a directory, not a .gguf file") from None
        raise ModelFileError(f"{path}: is {exc.kind}, not a .gguf file", hint="pass the model file itself") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ModelFileError(f"{path}: symlink loop (too many levels of symbolic links)",
                                 hint="point the link at the model file") from None
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            if path.is_symlink():
                raise ModelFileError(f"{path}: broken symlink (its target {os.readlink(path)} does not exist)",
                                     hint="point the link at the model file, or see `edgellm ls`") from None
            raise ModelFileError(f"{path}: no such file", hint="check the path, or see `edgellm ls` for downloaded models") from None
        raise ModelFileError(f"{path}: cannot read: {exc.strerror or exc}") from None


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
    kinds: dict[str, int] = {}
    for _ in range(n_kv):
        key = cursor.string()
        kind = cursor.take("<I")
        meta[key] = cursor.value(kind, keep_arrays=False, unique=key if key == _TOKENS else None)
        kinds[key] = kind
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
    alignment = meta.get("general.alignment", DEFAULT_ALIGNMENT)
    if "general.alignment" in meta and (kinds["general.alignment"] != _UINT32 or alignment <= 0 or alignment & (alignment - 1)):
        raise ValueError(f"general.alignment {alignment!r} is not a power of two")
    data_offset = (cursor.pos + alignment - 1) // alignment * alignment
    end_of_data = max((t.offset + t.n_bytes for t in tensors), default=0) + data_offset
    if end_of_data > size:
        missing = end_of_data - size
        raise ModelFileError(
            f"{path}: truncated GGUF: tensor data needs {end_of_data:,} bytes but the file has {size:,} ({missing:,} missing)",
            hint="the download was probably interrupted: delete it and pull again",
        )
    return _model_info(path, _Metadata(path, meta, kinds, cursor), tensors, size, data_offset)


class _Metadata:
    """A header's key/value pairs, read the way llama.cpp reads them (exact types, per-layer arrays).

    Every failure is a ModelFileError naming the key: llama.cpp would throw on a wrong type, or abort
    the process without a message on a value its GGML_ASSERTs refuse.
    """

    def __init__(self, path: Path, values: dict[str, Any], kinds: dict[str, int], cursor: _Cursor) -> None:
        self.path, self.values, self.kinds, self.cursor = path, values, kinds, cursor

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def bad(self, key: str, problem: str) -> ModelFileError:
        return ModelFileError(f"{self.path}: invalid GGUF header: {key} {problem}",
                              hint="the file is damaged or was not written by llama.cpp's tools: download or convert it again")

    def uint32(self, key: str, default: int | None = None, *, low: int = 0, high: int = MAX_DIMENSION) -> int | None:
        """A key llama.cpp reads with get_key<uint32_t>: stored as uint32 (it refuses other types), low..high."""
        if key not in self.values:
            return default
        kind = self.kinds[key]
        if kind != _UINT32:
            raise self.bad(key, f"is stored as {_describe(kind, self.values[key])}; llama.cpp reads it as uint32")
        value = int(self.values[key])
        if not low <= value <= high:
            raise self.bad(key, f"is {value}; expected {low} to {high}")
        return value

    def per_layer(self, key: str, n_layers: int, default: list[int] | None = None, *, low: int = 1) -> list[int] | None:
        """A key llama.cpp reads with get_key_or_arr: one uint32, or an array of one value per layer."""
        if key not in self.values:
            return default
        value = self.values[key]
        if not isinstance(value, _ArrayLength):
            return [self.uint32(key, low=low) or 0] * n_layers
        if value.item_kind not in (_UINT32, _INT32, _BOOL):
            raise self.bad(key, f"is an array of {_TYPE_NAMES.get(value.item_kind, value.item_kind)}; llama.cpp reads uint32")
        if int(value) != n_layers:
            raise self.bad(key, f"has {int(value)} values for {n_layers} layers")
        numbers = [int(n) for n in self.cursor.numbers(value)]
        wrong = next((n for n in numbers if not low <= n <= MAX_DIMENSION), None)
        if wrong is not None:
            raise self.bad(key, f"holds {wrong}; expected {low} to {MAX_DIMENSION} in every layer")
        return numbers


def _describe(kind: int, value: Any) -> str:
    name = _TYPE_NAMES.get(kind, f"type {kind}")
    return f"{name} {value!r}" if kind in _SCALARS or kind == _STRING and len(str(value)) < 40 else name


@dataclass(frozen=True)
class _Attention:
    n_layers: int
    n_embd: int
    n_head: list[int]
    n_head_kv: list[int]
    head_dim_k: int
    head_dim_v: int


def _check_hparams(meta: _Metadata, arch: str) -> _Attention:
    """What llama.cpp's load_hparams and the graph asserts on, before llama.cpp sees the file.

    Mirrors src/llama-model.cpp (load_hparams), src/llama-model-loader.cpp (get_key_or_arr) and
    the GGML_ASSERTs in src/models/<arch>.cpp; every size also stays below MAX_DIMENSION.
    """
    def key(name: str) -> str:
        return f"{arch}.{name}"

    n_layers = meta.uint32(key("block_count"), low=1, high=LLAMA_MAX_LAYERS)
    if n_layers is None:
        raise ModelFileError(f"{meta.path}: GGUF header lacks '{key('block_count')}'")
    meta.uint32(key("nextn_predict_layers"), high=n_layers)
    if meta.uint32(key("context_length"), low=1, high=2**32 - 1) is None:
        raise ModelFileError(f"{meta.path}: GGUF header lacks '{key('context_length')}'")
    n_embd = meta.uint32(key("embedding_length"), low=1)
    if n_embd is None:
        raise ModelFileError(f"{meta.path}: GGUF header lacks '{key('embedding_length')}'")
    n_head = meta.per_layer(key("attention.head_count"), n_layers)
    if n_head is None:
        raise ModelFileError(f"{meta.path}: GGUF header lacks '{key('attention.head_count')}'")
    n_head_kv = meta.per_layer(key("attention.head_count_kv"), n_layers, n_head) or n_head
    for layer, (heads, kv_heads) in enumerate(zip(n_head, n_head_kv, strict=False)):
        if heads % kv_heads:
            # ggml broadcasts K and V over the query heads only by whole multiples (an assert).
            raise meta.bad(key("attention.head_count_kv"), f"({kv_heads}) does not divide head_count ({heads}) in layer {layer}")
    # Without either, llama.cpp would make FFN tensors with a zero dimension (an assert).
    n_ff = meta.per_layer(key("feed_forward_length"), n_layers)
    if meta.per_layer(key("expert_feed_forward_length"), n_layers) is None and n_ff is None:
        raise ModelFileError(f"{meta.path}: GGUF header lacks '{key('feed_forward_length')}'")

    if key("attention.key_length") not in meta.values and n_embd % n_head[0]:
        raise meta.bad(key("embedding_length"), f"({n_embd}) is not a multiple of head_count ({n_head[0]})")
    head_dim_k = meta.uint32(key("attention.key_length"), n_embd // n_head[0], low=1) or 0
    head_dim_v = meta.uint32(key("attention.value_length"), head_dim_k, low=1) or 0
    if head_dim_k != head_dim_v:
        raise meta.bad(key("attention.value_length"), f"({head_dim_v}) differs from key_length ({head_dim_k}); llama.cpp's {arch} needs them equal")
    n_rot = meta.uint32(key("rope.dimension_count"), head_dim_k) or 0
    if arch in _ROPE_SPANS_HEAD and n_rot != head_dim_k:
        raise meta.bad(key("rope.dimension_count"), f"({n_rot}) differs from the head size ({head_dim_k}); llama.cpp's {arch} needs them equal")
    if n_rot % 2 or n_rot > head_dim_k:
        # ggml's RoPE asserts it rotates pairs of dimensions within one head (ggml-cpu/ops.cpp).
        raise meta.bad(key("rope.dimension_count"), f"({n_rot}) must be even and at most the head size ({head_dim_k})")
    scaling = meta.get(key("rope.scaling.type"))
    if scaling is not None and (meta.kinds[key("rope.scaling.type")] != _STRING or scaling not in ROPE_SCALING_TYPES):
        raise meta.bad(key("rope.scaling.type"), f"is {scaling!r}; llama.cpp knows {', '.join(ROPE_SCALING_TYPES)}")
    _check_experts(meta, arch, n_layers)
    return _Attention(n_layers, n_embd, n_head, n_head_kv, head_dim_k, head_dim_v)


def _check_experts(meta: _Metadata, arch: str, n_layers: int) -> None:
    """Mixture-of-experts counts, as load_hparams asserts them."""
    def key(name: str) -> str:
        return f"{arch}.{name}"

    n_expert = meta.uint32(key("expert_count"), 0, high=LLAMA_MAX_EXPERTS) or 0
    used = max(meta.per_layer(key("expert_used_count"), n_layers, [0], low=0) or [0])
    groups = meta.uint32(key("expert_group_count"), 0) or 0
    groups_used = meta.uint32(key("expert_group_used_count"), 0) or 0
    if used > n_expert:
        raise meta.bad(key("expert_used_count"), f"({used}) exceeds expert_count ({n_expert})")
    if n_expert and not used:
        raise meta.bad(key("expert_used_count"), f"is 0 (or missing) with {n_expert} experts")
    if groups and groups >= max(n_expert, 1):
        raise meta.bad(key("expert_group_count"), f"({groups}) must be less than expert_count ({n_expert})")
    if groups > 1 and (n_expert % groups or not 0 < groups_used < groups):
        raise meta.bad(key("expert_group_count"), f"({groups}) must divide expert_count ({n_expert}) with 0 < expert_group_used_count ({groups_used}) < it")


def _model_info(path: Path, meta: _Metadata, tensors: list[TensorInfo], size: int, data_offset: int) -> ModelInfo:
    arch = str(meta.get("general.architecture", "")) or "unknown"
    if arch not in SUPPORTED_ARCHS:
        raise ModelFileError(
            f"{path}: unsupported architecture '{arch}'",
            hint="edgellm runs decoder-only text models (llama, qwen2, qwen3, phi3, gemma, ...)",
        )
    attention = _check_hparams(meta, arch)
    tokens = meta.get(_TOKENS)
    n_vocab = int(tokens) if isinstance(tokens, _ArrayLength) else 0
    if not 0 < n_vocab <= MAX_DIMENSION:
        # llama.cpp sizes the embedding table by it and asserts every dimension is at least 1.
        raise meta.bad(_TOKENS, f"has {n_vocab} tokens" if isinstance(tokens, _ArrayLength) else "is missing (no vocabulary)")
    # Some models store per-layer head counts as arrays; edgellm plans with the maximum.
    n_ff = max(meta.per_layer(f"{arch}.feed_forward_length", attention.n_layers) or [0])
    names = {t.name for t in tensors}
    weights = sum(t.n_bytes for t in tensors)
    embedding = sum(t.n_bytes for t in tensors if t.name == "token_embd.weight")
    tied = "output.weight" not in names
    layer_bytes = [0] * attention.n_layers
    for tensor in tensors:
        layer = _block_index(tensor.name)
        if layer is not None and layer < attention.n_layers:
            layer_bytes[layer] += tensor.n_bytes
    output_bytes = sum(t.n_bytes for t in tensors if t.name in ("output.weight", "output_norm.weight")) + (embedding if tied else 0)
    file_type = meta.get("general.file_type")
    quant = FILE_TYPES.get(int(file_type) & ~1024, f"type {file_type}") if isinstance(file_type, int) else _guess_quant(tensors)
    template = meta.get("tokenizer.chat_template")
    return ModelInfo(
        arch=arch,
        name=str(meta.get("general.name", path.stem)),
        n_layers=attention.n_layers,
        n_embd=attention.n_embd,
        n_head=max(attention.n_head),
        n_head_kv=max(attention.n_head_kv),
        head_dim_k=attention.head_dim_k,
        head_dim_v=attention.head_dim_v,
        n_ff=n_ff,
        n_vocab=n_vocab,
        context_length=int(meta.get(f"{arch}.context_length")),
        quant=quant,
        weights_bytes=weights,
        bytes_per_token=weights if tied else weights - embedding,
        path=path,
        file_size=size,
        data_offset=data_offset,
        tied_embeddings=tied,
        chat_template=template if isinstance(template, str) else None,
        n_tensors=len(tensors),
        n_params=sum(math.prod(t.shape) for t in tensors),
        layer_bytes=tuple(layer_bytes),
        input_bytes=embedding,
        output_bytes=output_bytes,
    )


def _block_index(name: str) -> int | None:
    """'blk.12.attn_q.weight' -> 12."""
    if not name.startswith("blk."):
        return None
    number = name[4:].split(".", 1)[0]
    return int(number) if number.isdigit() else None


def _guess_quant(tensors: list[TensorInfo]) -> str:
    counts: dict[str, int] = {}
    for tensor in tensors:
        if len(tensor.shape) >= 2:
            counts[tensor.type_name] = counts.get(tensor.type_name, 0) + tensor.n_bytes
    return max(counts, key=counts.__getitem__) if counts else "unknown"
