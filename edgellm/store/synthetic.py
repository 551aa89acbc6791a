"""GGUF model files built at test and bench time, because no model weights can be downloaded there.

Two builders:

* `write_tiny_model`: a small qwen2 model in F32/F16 with a real byte-level BPE tokenizer (trained
  here, deterministically, on an English paragraph), DeepSeek-R1-Distill-Qwen's special tokens and
  chat template. It tokenizes, chats and quantizes with llama.cpp like a real model.
* `write_synthetic_model`: a full-size model (e.g. the 1.5B or 7B Qwen2 shape) whose tensors already
  have the types llama.cpp's quantizer would give them, with random bytes written directly in
  quantized block form. It has the real model's size and speed, without weights or a quantization step.

`quant_types` mirrors llama.cpp's `llama_tensor_get_type` (src/llama-quant.cpp) for the quantizations
edgellm makes, and `expected_file_size` gives the byte size of `write_synthetic_model`'s file.
`synthetic_model_path` builds a catalog model's synthetic file once and caches it (`bench --synthetic`).

llama_cpp is never imported here: tests reach it through `edgellm.runtime.engine`.
"""

from __future__ import annotations

import functools
import re
import shutil
import struct
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import gguf
import numpy as np

from edgellm.errors import EdgeLLMError, ModelNotFoundError, UsageError
from edgellm.paths import synthetic_models_dir
from edgellm.store import catalog
from edgellm.store.gguf import ModelShape
from edgellm.units import format_size

QT = gguf.GGMLQuantizationType
VT = gguf.GGUFValueType

__all__ = [
    "DEEPSEEK_R1_DISTILL_QWEN_TEMPLATE",
    "LLAMA32_TOKENS",
    "QWEN2_1_5B",
    "QWEN2_7B",
    "QWEN25_TOKENS",
    "R1_DISTILL_TOKENS",
    "SPECIAL_TOKENS",
    "TINY",
    "ChatTokens",
    "ModelShape",
    "TinyTokenizer",
    "expected_file_size",
    "quant_types",
    "synthetic_model_path",
    "synthetic_spec",
    "tensor_shapes",
    "tiny_tokenizer",
    "write_synthetic_model",
    "write_tiny_model",
]

# --------------------------------------------------------------------------------------------------
# Model shapes
# --------------------------------------------------------------------------------------------------

SUPPORTED_ARCHS = ("qwen2", "llama")


# DeepSeek-R1-Distill-Qwen-1.5B / -7B (config.json of each; both have untied embeddings).
QWEN2_1_5B = ModelShape(
    n_layers=28, n_embd=1536, n_head=12, n_head_kv=2, n_ff=8960, n_vocab=151936, context_length=131072
)
QWEN2_7B = ModelShape(
    n_layers=28, n_embd=3584, n_head=28, n_head_kv=4, n_ff=18944, n_vocab=152064, context_length=131072
)

# --------------------------------------------------------------------------------------------------
# Tokenizer: GPT-2 style byte-level BPE trained here, plus DeepSeek-R1-Distill-Qwen's special tokens
# --------------------------------------------------------------------------------------------------

# The training text. Plain English so that common words become single tokens, as in a real model.
TRAINING_TEXT = """\
The quick brown fox jumps over the lazy dog. Small language models can run on edge hardware such as
a Raspberry Pi, a phone or an old laptop, as long as the weights are quantized and the threads are
chosen with care. A model file holds the tokenizer, the chat template and every tensor of the
network. When the user types a question, the program turns the text into tokens, runs the tokens
through the layers of the model, and samples the next token from the output. Then it does the same
again and again, one token at a time, until the answer is complete or the model says that it is done.
Memory is often the limit on a small board: the weights, the key and value cache and the compute
buffers all have to fit, and the operating system needs room as well. Speed depends on how many bytes
the processor can read each second, because every new token reads all of the weights once. This is
why a smaller quantization is faster, and why the number of threads should match the number of fast
cores. Hello, world! How are you today? I am fine, thank you. What is the time? It is ten past three.
We tested the model with 1, 2, 4 and 8 threads, and wrote down the tokens per second for each run.
"""

# GPT-2 / Qwen2 pre-tokenizer, with \p{L} and \p{N} approximated for Python's re (training only;
# at run time llama.cpp applies its own qwen2 pre-tokenizer).
_L = r"[^\W\d_]"
_NOT_LN_CRLF = r"(?:[^\w\r\n]|_)"
_NOT_LN_SPACE = r"(?:[^\w\s]|_)"
_PRETOKENIZE = re.compile(
    rf"(?i:'s|'t|'re|'ve|'m|'ll|'d)|{_NOT_LN_CRLF}?{_L}+|\d| ?{_NOT_LN_SPACE}+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Number of merges learnt; fewer if the text runs out of pairs seen at least twice.
N_MERGES = 400

# DeepSeek-R1-Distill-Qwen's added tokens that matter for chat: (text, GGUF token type). <think> and
# </think> are not "special" in its tokenizer.json, so convert_hf_to_gguf makes them USER_DEFINED.
SPECIAL_TOKENS: tuple[tuple[str, int], ...] = (
    ("<｜end▁of▁sentence｜>", int(gguf.TokenType.CONTROL)),
    ("<｜User｜>", int(gguf.TokenType.CONTROL)),
    ("<｜Assistant｜>", int(gguf.TokenType.CONTROL)),
    ("<｜begin▁of▁sentence｜>", int(gguf.TokenType.CONTROL)),
    ("<|EOT|>", int(gguf.TokenType.CONTROL)),
    ("<think>", int(gguf.TokenType.USER_DEFINED)),
    ("</think>", int(gguf.TokenType.USER_DEFINED)),
)
BOS_TEXT = "<｜begin▁of▁sentence｜>"
EOS_TEXT = "<｜end▁of▁sentence｜>"
# Where the real Qwen2 vocabularies put the added tokens (<｜end▁of▁sentence｜> = 151643); used when
# n_vocab is large enough, so full-size synthetic models have the real bos/eos ids.
REAL_SPECIAL_BASE = 151643

# DeepSeek-R1-Distill-Qwen's tokenizer_config.json chat_template (the revision whose generation
# prompt ends with '<｜Assistant｜><think>\n'). Raw string: the template itself contains '\n' escapes.
DEEPSEEK_R1_DISTILL_QWEN_TEMPLATE = (
    r"""{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"""
    r"""{% set ns = namespace(is_first=false, is_tool=false, is_output_first=true, system_prompt='') %}"""
    r"""{%- for message in messages %}{%- if message['role'] == 'system' %}{% set ns.system_prompt = message['content'] %}"""
    r"""{%- endif %}{%- endfor %}{{bos_token}}{{ns.system_prompt}}{%- for message in messages %}"""
    r"""{%- if message['role'] == 'user' %}{%- set ns.is_tool = false -%}{{'<｜User｜>' + message['content']}}{%- endif %}"""
    r"""{%- if message['role'] == 'assistant' and message['content'] is none %}{%- set ns.is_tool = false -%}"""
    r"""{%- for tool in message['tool_calls']%}{%- if not ns.is_first %}"""
    r"""{{'<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + tool['function']['name'] + '\n' + '```json' + '\n' + tool['function']['arguments'] + '\n' + '```' + '<｜tool▁call▁end｜>'}}"""
    r"""{%- set ns.is_first = true -%}{%- else %}"""
    r"""{{'\n' + '<｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + tool['function']['name'] + '\n' + '```json' + '\n' + tool['function']['arguments'] + '\n' + '```' + '<｜tool▁call▁end｜>'}}"""
    r"""{{'<｜tool▁calls▁end｜><｜end▁of▁sentence｜>'}}{%- endif %}{%- endfor %}{%- endif %}"""
    r"""{%- if message['role'] == 'assistant' and message['content'] is not none %}{%- if ns.is_tool %}"""
    r"""{{'<｜tool▁outputs▁end｜>' + message['content'] + '<｜end▁of▁sentence｜>'}}{%- set ns.is_tool = false -%}"""
    r"""{%- else %}{% set content = message['content'] %}{% if '</think>' in content %}"""
    r"""{% set content = content.split('</think>')[-1] %}{% endif %}"""
    r"""{{'<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>'}}{%- endif %}{%- endif %}"""
    r"""{%- if message['role'] == 'tool' %}{%- set ns.is_tool = true -%}{%- if ns.is_output_first %}"""
    r"""{{'<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>' + message['content'] + '<｜tool▁output▁end｜>'}}"""
    r"""{%- set ns.is_output_first = false %}{%- else %}"""
    r"""{{'\n<｜tool▁output▁begin｜>' + message['content'] + '<｜tool▁output▁end｜>'}}{%- endif %}{%- endif %}"""
    r"""{%- endfor -%}{% if ns.is_tool %}{{'<｜tool▁outputs▁end｜>'}}{% endif %}"""
    r"""{% if add_generation_prompt and not ns.is_tool %}{{'<｜Assistant｜><think>\n'}}{% endif %}"""
)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map (the one llama.cpp's unicode_byte_to_utf8 uses)."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs, strict=True)}


@dataclass(frozen=True)
class TinyTokenizer:
    """The trained BPE: byte tokens first (GPT-2 order), then merged tokens, then special tokens."""

    tokens: tuple[str, ...]
    token_types: tuple[int, ...]
    merges: tuple[str, ...]
    n_regular: int  # tokens before the special ones

    def __len__(self) -> int:
        return len(self.tokens)


def _train_bpe(text: str, n_merges: int) -> tuple[list[str], list[str]]:
    """Byte-level BPE training: repeatedly merge the most frequent adjacent pair (ties: smallest pair)."""
    byte_map = _bytes_to_unicode()
    words: Counter[tuple[str, ...]] = Counter(
        tuple(byte_map[b] for b in piece.encode("utf-8")) for piece in _PRETOKENIZE.findall(text)
    )
    vocab = list(byte_map.values())
    known = set(vocab)
    merges: list[str] = []
    for _ in range(n_merges):
        pairs: Counter[tuple[str, str]] = Counter()
        for word, freq in words.items():
            for pair in zip(word, word[1:], strict=False):
                pairs[pair] += freq
        if not pairs:
            break
        best, count = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))
        if count < 2:
            break
        merges.append(f"{best[0]} {best[1]}")
        joined = best[0] + best[1]
        if joined not in known:  # two different pairs can spell the same token
            known.add(joined)
            vocab.append(joined)
        new_words: Counter[tuple[str, ...]] = Counter()
        for word, freq in words.items():
            out: list[str] = []
            i = 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(joined)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            new_words[tuple(out)] += freq
        words = new_words
    return vocab, merges


@functools.lru_cache(maxsize=1)
def tiny_tokenizer() -> TinyTokenizer:
    """The BPE tokenizer every model built here uses (trained once per process, a few milliseconds)."""
    vocab, merges = _train_bpe(TRAINING_TEXT, N_MERGES)
    tokens = tuple(vocab) + tuple(text for text, _ in SPECIAL_TOKENS)
    types = (int(gguf.TokenType.NORMAL),) * len(vocab) + tuple(t for _, t in SPECIAL_TOKENS)
    return TinyTokenizer(tokens=tokens, token_types=types, merges=tuple(merges), n_regular=len(vocab))


TINY = ModelShape(
    n_layers=2,
    n_embd=256,  # a multiple of 256 so K-quants apply to most tensors
    n_head=4,
    n_head_kv=2,
    n_ff=512,
    n_vocab=len(tiny_tokenizer()),
    context_length=2048,
)


@dataclass(frozen=True)
class _Vocab:
    tokens: list[bytes]
    token_types: np.ndarray
    merges: list[bytes]
    bos_id: int
    eos_id: int


@dataclass(frozen=True)
class ChatTokens:
    """A model family's added tokens that its chat template writes, and which are BOS and EOS."""

    specials: tuple[tuple[str, int], ...]
    bos: str
    eos: str


R1_DISTILL_TOKENS = ChatTokens(SPECIAL_TOKENS, BOS_TEXT, EOS_TEXT)
# Qwen2.5-Instruct's added tokens for chat and tool calls (tokenizer.json; <tool_call> is not
# "special" there, so convert_hf_to_gguf makes it USER_DEFINED). It has no BOS; <|im_end|> ends a turn.
QWEN25_TOKENS = ChatTokens(
    (
        ("<|endoftext|>", int(gguf.TokenType.CONTROL)),
        ("<|im_start|>", int(gguf.TokenType.CONTROL)),
        ("<|im_end|>", int(gguf.TokenType.CONTROL)),
        ("<tool_call>", int(gguf.TokenType.USER_DEFINED)),
        ("</tool_call>", int(gguf.TokenType.USER_DEFINED)),
    ),
    bos="<|endoftext|>",
    eos="<|im_end|>",
)
# Llama 3.2-Instruct's special tokens that its template and tool calls use (all CONTROL).
LLAMA32_TOKENS = ChatTokens(
    tuple((text, int(gguf.TokenType.CONTROL)) for text in (
        "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
        "<|eot_id|>", "<|eom_id|>", "<|python_tag|>",
    )),
    bos="<|begin_of_text|>",
    eos="<|eot_id|>",
)


def _vocab_for(n_vocab: int, chat_tokens: ChatTokens = R1_DISTILL_TOKENS) -> _Vocab:
    """Exactly n_vocab tokens: the tiny BPE, the special tokens (at their real Qwen2 ids when they
    fit) and filler tokens ("[PAD123]", valid byte-level text, so they detokenize) elsewhere."""
    tok = tiny_tokenizer()
    n_special = len(chat_tokens.specials)
    if n_vocab < tok.n_regular + n_special:
        raise ValueError(f"n_vocab {n_vocab} is smaller than the tokenizer's {tok.n_regular + n_special} tokens")
    regular = [t.encode() for t in tok.tokens[: tok.n_regular]]
    specials = [text.encode() for text, _ in chat_tokens.specials]
    base = REAL_SPECIAL_BASE if n_vocab >= REAL_SPECIAL_BASE + n_special else tok.n_regular
    tokens: list[bytes] = regular
    tokens += [b"[PAD%d]" % i for i in range(len(tokens), base)]
    tokens += specials
    tokens += [b"[PAD%d]" % i for i in range(len(tokens), n_vocab)]
    types = np.full(n_vocab, int(gguf.TokenType.NORMAL), dtype="<i4")
    types[base : base + n_special] = [kind for _, kind in chat_tokens.specials]
    texts = [text for text, _ in chat_tokens.specials]
    return _Vocab(
        tokens=tokens,
        token_types=types,
        merges=[m.encode() for m in tok.merges],
        bos_id=base + texts.index(chat_tokens.bos),
        eos_id=base + texts.index(chat_tokens.eos),
    )


# --------------------------------------------------------------------------------------------------
# Tensors and llama.cpp's per-tensor quantization types
# --------------------------------------------------------------------------------------------------

# Quantization name -> (llama_ftype, default ggml type), from llama.h and llama_ftype_get_default_type.
_FTYPES: dict[str, tuple[int, QT]] = {
    "F32": (0, QT.F32),
    "F16": (1, QT.F16),
    "Q4_0": (2, QT.Q4_0),
    "Q8_0": (7, QT.Q8_0),
    "Q4_K_S": (14, QT.Q4_K),
    "Q4_K_M": (15, QT.Q4_K),
    "Q5_K_S": (16, QT.Q5_K),
    "Q5_K_M": (17, QT.Q5_K),
    "Q6_K": (18, QT.Q6_K),
}
_UNQUANTIZED = (QT.F32, QT.F16)


def _layer_of(name: str) -> int:
    m = re.match(r"blk\.(\d+)\.", name)
    return int(m.group(1)) if m else -1


def tensor_shapes(shape: ModelShape) -> dict[str, tuple[int, ...]]:
    """Every tensor's ggml shape (ne[0] first), in the order llama.cpp's quantizer writes them:
    non-layer tensors by name, then layer by layer, by name within a layer (weight_name_comparer)."""
    if shape.arch not in SUPPORTED_ARCHS:
        raise ValueError(f"unsupported arch {shape.arch!r} (supported: {', '.join(SUPPORTED_ARCHS)})")
    e, kv, ff, v = shape.n_embd, shape.n_embd_kv, shape.n_ff, shape.n_vocab
    out: dict[str, tuple[int, ...]] = {"token_embd.weight": (e, v), "output_norm.weight": (e,)}
    if not shape.tied_embeddings:
        out["output.weight"] = (e, v)
    for i in range(shape.n_layers):
        p = f"blk.{i}."
        out[p + "attn_norm.weight"] = (e,)
        out[p + "attn_q.weight"] = (e, e)
        out[p + "attn_k.weight"] = (e, kv)
        out[p + "attn_v.weight"] = (e, kv)
        if shape.arch == "qwen2":  # qwen2 has q/k/v biases
            out[p + "attn_q.bias"] = (e,)
            out[p + "attn_k.bias"] = (kv,)
            out[p + "attn_v.bias"] = (kv,)
        out[p + "attn_output.weight"] = (e, e)
        out[p + "ffn_norm.weight"] = (e,)
        out[p + "ffn_gate.weight"] = (e, ff)
        out[p + "ffn_up.weight"] = (e, ff)
        out[p + "ffn_down.weight"] = (ff, e)
    order = sorted(out, key=lambda n: (_layer_of(n), n))
    return {n: out[n] for n in order}


def _block_size(t: QT) -> int:
    return gguf.GGML_QUANT_SIZES[t][0]


def _use_more_bits(i_layer: int, n_layers: int) -> bool:
    # llama-quant.cpp: the first and last eighth of the layers, and every third layer in between.
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


def _fallback(ncols: int, t: QT) -> QT:
    """tensor_type_fallback: a row length the block size does not divide gets a 32-block type, else F16."""
    if ncols % _block_size(t) == 0:
        return t
    ret = {QT.Q4_K: QT.Q5_0, QT.Q5_K: QT.Q5_1, QT.Q6_K: QT.Q8_0, QT.Q2_K: QT.Q4_0, QT.Q3_K: QT.Q4_0}.get(t, t)
    return ret if ncols % _block_size(ret) == 0 else QT.F16


def _is_70b(shape: ModelShape) -> bool:
    # LLM_TYPE_70B as load_arch_hparams sets it (models/qwen2.cpp, models/llama.cpp).
    if shape.n_layers != 80:
        return False
    return shape.arch == "qwen2" or shape.n_head != shape.n_head_kv


def quant_types(shape: ModelShape, quant: str) -> dict[str, QT]:
    """Per-tensor types as llama.cpp's quantizer assigns them (llama_tensor_get_type in llama-quant.cpp)
    for a source file with F32 norms/biases, without imatrix or overrides."""
    quant = quant.upper()
    if quant not in _FTYPES:
        raise ValueError(f"unsupported quantization {quant!r} (supported: {', '.join(_FTYPES)})")
    default = _FTYPES[quant][1]
    n = shape.n_layers
    result: dict[str, QT] = {}
    for name, ne in tensor_shapes(shape).items():
        # tensor_allows_quantization: only 2D+ "...weight" tensors that are not norms.
        if len(ne) < 2 or not name.endswith("weight") or "_norm.weight" in name:
            result[name] = QT.F32
            continue
        if default in _UNQUANTIZED:
            result[name] = default
            continue
        t = default
        i = _layer_of(name)
        if name == "output.weight" or (shape.tied_embeddings and name == "token_embd.weight"):
            # A tied token_embd is the output matrix too, so it gets the output's type.
            if ne[0] % _block_size(t) != 0:
                t = QT.Q8_0
            elif t != QT.Q8_0:
                t = QT.Q6_K
        elif name == "token_embd.weight":
            pass
        elif name.endswith("attn_v.weight"):
            if quant in ("Q4_K_M", "Q5_K_M") and _use_more_bits(i, n):
                t = QT.Q6_K
            elif quant == "Q4_K_S" and i < 4:
                t = QT.Q5_K
            if _is_70b(shape) and t in (QT.Q3_K, QT.Q4_K):
                # 70B shares attn_v across 8 heads: more bits for almost no size
                t = QT.Q5_K
        elif name.endswith("ffn_down.weight"):
            if quant in ("Q4_K_M", "Q5_K_M"):
                if _use_more_bits(i, n):
                    t = QT.Q6_K
            elif quant == "Q4_K_S" and i < n // 8:
                t = QT.Q5_K
        result[name] = _fallback(ne[0], t)
    return result


def _nbytes(ne: tuple[int, ...], t: QT) -> int:
    block, type_size = gguf.GGML_QUANT_SIZES[t]
    n = int(np.prod(ne))
    if ne[0] % block:
        raise ValueError(f"row of {ne[0]} is not a whole number of {t.name} blocks")
    return n // block * type_size


# --------------------------------------------------------------------------------------------------
# GGUF writing (done by hand: exact sizes without writing, streamed tensor data, fast big vocabularies)
# --------------------------------------------------------------------------------------------------

ALIGNMENT = 32  # GGUF_DEFAULT_ALIGNMENT; we never write general.alignment
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


def _pad(n: int) -> int:
    return (n + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT


def _str(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return _U64.pack(len(b)) + b


def _str_array(items: Sequence[bytes]) -> bytes:
    # One join over pre-packed lengths: ~50 ms for a 152k-token vocabulary.
    pack = _U64.pack
    return b"".join([x for item in items for x in (pack(len(item)), item)])


KV = tuple[str, VT, object]


def _kv_bytes(key: str, vtype: VT, value: object) -> bytes:
    head = _str(key) + _U32.pack(int(vtype))
    if vtype == VT.STRING:
        assert isinstance(value, (str, bytes))
        return head + _str(value)
    if vtype == VT.UINT32:
        return head + _U32.pack(int(value))  # type: ignore[call-overload]
    if vtype == VT.FLOAT32:
        return head + struct.pack("<f", float(value))  # type: ignore[arg-type]
    if vtype == VT.BOOL:
        return head + struct.pack("<?", bool(value))
    if vtype == VT.ARRAY:
        elem_type, items = cast(tuple[VT, Sequence[Any]], value)
        if elem_type == VT.STRING:
            return head + _U32.pack(int(VT.STRING)) + _U64.pack(len(items)) + _str_array(items)
        if elem_type == VT.INT32:
            arr = np.asarray(items, dtype="<i4")
            return head + _U32.pack(int(VT.INT32)) + _U64.pack(arr.size) + arr.tobytes()
    raise ValueError(f"cannot encode {key} as {vtype!r}")


def _header(kvs: Sequence[KV], tensors: Sequence[tuple[str, tuple[int, ...], QT]]) -> bytes:
    """Everything before the tensor data, padded to the alignment."""
    parts = [b"GGUF", _U32.pack(3), _U64.pack(len(tensors)), _U64.pack(len(kvs))]
    parts += [_kv_bytes(*kv) for kv in kvs]
    offset = 0
    for name, ne, t in tensors:
        parts.append(_str(name) + _U32.pack(len(ne)) + b"".join(_U64.pack(d) for d in ne))
        parts.append(_U32.pack(int(t)) + _U64.pack(offset))
        offset += _pad(_nbytes(ne, t))
    head = b"".join(parts)
    return head + b"\0" * (_pad(len(head)) - len(head))


def _model_kvs(shape: ModelShape, *, name: str, file_type: int, chat_template: str | None,
               chat_tokens: ChatTokens = R1_DISTILL_TOKENS) -> list[KV]:
    """The metadata convert_hf_to_gguf.py writes for a Qwen2 model, with our tokenizer."""
    a = shape.arch
    vocab = _vocab_for(shape.n_vocab, chat_tokens)
    kvs: list[KV] = [
        ("general.architecture", VT.STRING, a),
        ("general.type", VT.STRING, "model"),
        ("general.name", VT.STRING, name),
        (f"{a}.block_count", VT.UINT32, shape.n_layers),
        (f"{a}.context_length", VT.UINT32, shape.context_length),
        (f"{a}.embedding_length", VT.UINT32, shape.n_embd),
        (f"{a}.feed_forward_length", VT.UINT32, shape.n_ff),
        (f"{a}.attention.head_count", VT.UINT32, shape.n_head),
        (f"{a}.attention.head_count_kv", VT.UINT32, shape.n_head_kv),
        (f"{a}.rope.freq_base", VT.FLOAT32, shape.rope_theta),
        (f"{a}.attention.layer_norm_rms_epsilon", VT.FLOAT32, 1e-6),
        ("general.file_type", VT.UINT32, file_type),
        ("general.quantization_version", VT.UINT32, 2),  # GGML_QNT_VERSION
        ("tokenizer.ggml.model", VT.STRING, "gpt2"),
        # What convert_hf_to_gguf names DeepSeek-R1-Distill-Qwen's pre-tokenizer; llama.cpp maps it to
        # LLAMA_VOCAB_PRE_TYPE_QWEN2, like "qwen2".
        ("tokenizer.ggml.pre", VT.STRING, "deepseek-r1-qwen"),
        ("tokenizer.ggml.tokens", VT.ARRAY, (VT.STRING, vocab.tokens)),
        ("tokenizer.ggml.token_type", VT.ARRAY, (VT.INT32, vocab.token_types)),
        ("tokenizer.ggml.merges", VT.ARRAY, (VT.STRING, vocab.merges)),
        ("tokenizer.ggml.bos_token_id", VT.UINT32, vocab.bos_id),
        ("tokenizer.ggml.eos_token_id", VT.UINT32, vocab.eos_id),
        ("tokenizer.ggml.padding_token_id", VT.UINT32, vocab.eos_id),
        ("tokenizer.ggml.add_bos_token", VT.BOOL, True),
        ("tokenizer.ggml.add_eos_token", VT.BOOL, False),
    ]
    if chat_template:
        kvs.append(("tokenizer.chat_template", VT.STRING, chat_template))
    return kvs


DataFn = Callable[[str, tuple[int, ...], QT], Iterator[bytes]]


def _write_gguf(
    path: Path, kvs: Sequence[KV], tensors: Sequence[tuple[str, tuple[int, ...], QT]], data: DataFn
) -> Path:
    """Write header then each tensor's data chunks, checking each tensor's byte count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")  # a crash never leaves a plausible-looking model behind
    with open(tmp, "wb") as f:
        f.write(_header(kvs, tensors))
        for name, ne, t in tensors:
            written = 0
            for chunk in data(name, ne, t):
                f.write(chunk)
                written += len(chunk)
            if written != _nbytes(ne, t):
                raise AssertionError(f"{name}: wrote {written} bytes, expected {_nbytes(ne, t)}")
            f.write(b"\0" * (_pad(written) - written))  # llama.cpp pads after every tensor, the last too
    tmp.replace(path)
    return path


# --------------------------------------------------------------------------------------------------
# Random weights
# --------------------------------------------------------------------------------------------------

WEIGHT_STD = 0.02  # small enough that activations and logits stay finite through RMS-normed layers
_CHUNK_BYTES = 8 << 20  # memory bound while writing a tensor

# For each quantized type: the byte offsets of its f16 fields in a block (ggml-common.h), and for
# each field its value relative to the block scale d, and the std of a weight when d == 1 with all
# other bytes uniformly random (so d = WEIGHT_STD / that). A min field is set to cancel the mean.
#   Q4_0 w = d*(q-8)           Q8_0 w = d*q (int8)           Q5_0 w = d*(q-16)
#   Q4_1 w = d*q + m           Q5_1 w = d*q + m
#   Q4_K w = d*sc*q - dmin*m   (sc, m 6-bit; q 4-bit)        Q5_K same with 5-bit q
#   Q6_K w = d*sc*(q-32)       (sc int8; q 6-bit; d at the end of the block)
_BLOCK_LAYOUT: dict[QT, tuple[tuple[tuple[int, float], ...], float]] = {
    QT.Q4_0: (((0, 1.0),), 4.61),
    QT.Q4_1: (((0, 1.0), (2, -7.5)), 4.61),
    QT.Q5_0: (((0, 1.0),), 9.23),
    QT.Q5_1: (((0, 1.0), (2, -15.5)), 9.23),
    QT.Q8_0: (((0, 1.0),), 73.9),
    QT.Q4_K: (((0, 1.0), (2, 7.5)), 258.0),
    QT.Q5_K: (((0, 1.0), (2, 15.5)), 527.0),
    QT.Q6_K: (((208, 1.0),), 1365.0),
}


def _random_data(rng: np.random.Generator, ne: tuple[int, ...], t: QT, *, norm: bool) -> Iterator[bytes]:
    """A tensor's bytes in chunks of whole blocks: normal floats, or random quantized blocks whose
    f16 scale fields hold small finite values (so no NaN/inf can come out of dequantization)."""
    n = int(np.prod(ne))
    if t in _UNQUANTIZED:
        dtype = np.float32 if t == QT.F32 else np.float16
        step = max(1, _CHUNK_BYTES // np.dtype(dtype).itemsize)
        for start in range(0, n, step):
            m = min(step, n - start)
            if norm:  # RMSNorm weights: around 1, as in trained models
                vals = 1.0 + 0.05 * rng.standard_normal(m, dtype=np.float32)
            else:
                vals = WEIGHT_STD * rng.standard_normal(m, dtype=np.float32)
            yield vals.astype(dtype).tobytes()
        return
    if t not in _BLOCK_LAYOUT:
        raise ValueError(f"no random block layout for {t.name}")
    block, type_size = gguf.GGML_QUANT_SIZES[t]
    fields, unit_std = _BLOCK_LAYOUT[t]
    n_blocks = n // block
    step = max(1, _CHUNK_BYTES // type_size)
    base = WEIGHT_STD / unit_std
    for start in range(0, n_blocks, step):
        m = min(step, n_blocks - start)
        blocks = rng.integers(0, 256, size=(m, type_size), dtype=np.uint8)
        d = base * (0.5 + rng.random(m, dtype=np.float32))  # per-block scale, in [0.5, 1.5) x base
        for offset, rel in fields:
            blocks[:, offset : offset + 2] = (d * rel).astype("<f2").view(np.uint8).reshape(m, 2)
        yield blocks.tobytes()


# --------------------------------------------------------------------------------------------------
# Public builders
# --------------------------------------------------------------------------------------------------


def write_tiny_model(
    path: Path,
    *,
    shape: ModelShape = TINY,
    dtype: str = "F32",
    seed: int = 0,
    chat_template: str | None = None,
    chat_tokens: ChatTokens = R1_DISTILL_TOKENS,
) -> Path:
    """A small qwen2 GGUF with a real working byte-level BPE tokenizer, DeepSeek-R1-Distill-Qwen's
    special tokens and chat template (None: that template; "": none), and random F32/F16 weights.
    `chat_tokens`: another family's added tokens, for its template (Qwen2.5, Llama 3.2).

    2D weights are stored in `dtype`; norms and biases in F32, as convert_hf_to_gguf does, so that
    llama.cpp's quantizer treats the file like a real converted model.
    """
    dtype = dtype.upper()
    if dtype not in ("F32", "F16"):
        raise ValueError("dtype must be F32 or F16")
    wtype = QT.F32 if dtype == "F32" else QT.F16
    if chat_tokens is not R1_DISTILL_TOKENS and shape.n_vocab == TINY.n_vocab:
        shape = replace(shape, n_vocab=tiny_tokenizer().n_regular + len(chat_tokens.specials))
    shapes = tensor_shapes(shape)
    tensors = [(n, ne, wtype if len(ne) >= 2 else QT.F32) for n, ne in shapes.items()]
    template = DEEPSEEK_R1_DISTILL_QWEN_TEMPLATE if chat_template is None else chat_template
    kvs = _model_kvs(shape, name="edgellm tiny test model", file_type=_FTYPES[dtype][0], chat_template=template,
                     chat_tokens=chat_tokens)
    rng = np.random.default_rng(seed)

    def data(name: str, ne: tuple[int, ...], t: QT) -> Iterator[bytes]:
        return _random_data(rng, ne, t, norm=name.endswith("norm.weight"))

    return _write_gguf(path, kvs, tensors, data)


def _synthetic_layout(
    shape: ModelShape, quant: str, name: str
) -> tuple[list[KV], list[tuple[str, tuple[int, ...], QT]]]:
    types = quant_types(shape, quant)
    tensors = [(n, ne, types[n]) for n, ne in tensor_shapes(shape).items()]
    general_name = name if "synthetic" in name.lower() else f"{name} (synthetic)"
    kvs = _model_kvs(
        shape,
        name=general_name,
        file_type=_FTYPES[quant.upper()][0],
        chat_template=DEEPSEEK_R1_DISTILL_QWEN_TEMPLATE,
    )
    return kvs, tensors


def expected_file_size(shape: ModelShape, quant: str, *, name: str = "synthetic") -> int:
    """The size in bytes of `write_synthetic_model(path, shape, quant, name=name)`'s file, without
    writing it (metadata included, so it is exact)."""
    kvs, tensors = _synthetic_layout(shape, quant, name)
    return len(_header(kvs, tensors)) + sum(_pad(_nbytes(ne, t)) for _, ne, t in tensors)


def write_synthetic_model(
    path: Path, shape: ModelShape, quant: str, *, seed: int = 0, name: str = "synthetic"
) -> Path:
    """A GGUF with the model's architecture, tensor shapes and llama.cpp's per-tensor types for `quant`,
    random weights written directly in quantized block form, tensor by tensor in 8 MiB chunks.

    The vocabulary has exactly n_vocab tokens (tiny BPE + special tokens + fillers); `general.name`
    always says synthetic. Its size is exactly `expected_file_size(shape, quant, name=name)`.
    """
    kvs, tensors = _synthetic_layout(shape, quant, name)
    rng = np.random.default_rng(seed)

    def data(tname: str, ne: tuple[int, ...], t: QT) -> Iterator[bytes]:
        return _random_data(rng, ne, t, norm=tname.endswith("norm.weight"))

    return _write_gguf(path, kvs, tensors, data)


# --------------------------------------------------------------------------------------------------
# Cached synthetic models of catalog shapes (bench --synthetic)
# --------------------------------------------------------------------------------------------------


def _synthetic_shape(name: str) -> ModelShape | None:
    """A catalog model's architecture, or the test suite's tiny shape."""
    if name == "tiny":
        return TINY
    entry = catalog.find_entry(name)
    return entry.shape if entry is not None else None


def synthetic_spec(spec: str) -> tuple[str, str, ModelShape]:
    """'deepseek-r1-7b:Q4_K_M' -> (name, quant, ModelShape); the quant defaults to Q4_K_M."""
    name, _, quant = spec.partition(":")
    name, quant = name.strip().lower(), (quant.strip() or "Q4_K_M").upper()
    shape = _synthetic_shape(name)
    if shape is None:
        raise ModelNotFoundError(
            f"no synthetic shape for '{name}'",
            hint="edgellm bench --synthetic NAME, with a name from `edgellm models`: " + ", ".join(sorted(catalog.load_catalog())),
        )
    try:
        quant_types(shape, quant)
    except ValueError as exc:
        raise UsageError(f"--synthetic {spec}: {exc}", hint=f"edgellm bench --synthetic {name}:Q4_K_M") from None
    return name, quant, shape


def synthetic_model_path(spec: str, *, cache_dir: Path | None = None, announce: Callable[[str], None] | None = None) -> Path:
    """Build (once) and return the cached synthetic GGUF for `spec`, e.g. 'deepseek-r1-1.5b:Q4_K_S'."""
    name, quant, shape = synthetic_spec(spec)
    directory = cache_dir or synthetic_models_dir()
    path = directory / f"{name}-{quant}-synthetic.gguf"
    label = f"{name} (synthetic)"
    expected = expected_file_size(shape, quant, name=label)
    if path.is_file() and path.stat().st_size == expected:
        return path
    free = shutil.disk_usage(directory if directory.exists() else directory.anchor or "/").free
    if free < expected:
        raise EdgeLLMError(
            f"a synthetic {name} {quant} needs {format_size(expected)} on disk but {directory} has {format_size(free)} free",
            hint="free some space, or point EDGELLM_HOME at a larger disk",
        )
    directory.mkdir(parents=True, exist_ok=True)
    if announce:
        announce(f"building synthetic {name} {quant} ({expected / 1e9:.2f} GB, once) in {path}")
    partial = path.with_suffix(".partial")
    try:
        write_synthetic_model(partial, shape, quant, name=label)
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
    return path
