"""Tests of edgellm.store.synthetic: the tiny tokenizer model, llama.cpp's quantization types, synthetic models."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from types import ModuleType

import gguf
import numpy as np
import pytest

from edgellm.errors import RuntimeUnavailableError
from edgellm.runtime import native
from edgellm.store import synthetic
from edgellm.store.synthetic import (
    QWEN2_1_5B,
    QWEN2_7B,
    TINY,
    ModelShape,
    expected_file_size,
    quant_types,
    write_synthetic_model,
    write_tiny_model,
)

QT = gguf.GGMLQuantizationType

# 28 layers like the 1.5B/7B (so use_more_bits picks the same layers), widths multiples of 256.
DEEP = ModelShape(n_layers=28, n_embd=256, n_head=4, n_head_kv=2, n_ff=512, n_vocab=TINY.n_vocab)
# Widths that are not multiples of 256 (K-quant fallbacks to Q5_0/Q5_1/Q8_0), an n_ff that is not
# a multiple of 32 (ffn_down falls back to F16), and tied embeddings (token_embd gets output's type).
ODD = ModelShape(
    n_layers=9, n_embd=320, n_head=5, n_head_kv=1, n_ff=200, n_vocab=TINY.n_vocab, tied_embeddings=True
)
# The other supported arch: no attention biases.
LLAMA = ModelShape(arch="llama", n_layers=8, n_embd=256, n_head=4, n_head_kv=4, n_ff=512, n_vocab=TINY.n_vocab)
# Tiny widths with the real Qwen2 vocabulary size: special tokens land on their real ids.
BIG_VOCAB = ModelShape(n_layers=2, n_embd=256, n_head=4, n_head_kv=2, n_ff=512, n_vocab=151936)

ENGLISH = "Hello, world! The quick brown fox jumps over the lazy dog at 10:45.\nSpeed: 12.5 tokens/s."


@pytest.fixture(scope="module")
def llama_cpp() -> ModuleType:
    try:
        return native.load_llama_cpp()
    except RuntimeUnavailableError as exc:  # pragma: no cover - depends on the machine
        pytest.skip(str(exc))


def _types_in(path: Path) -> dict[str, tuple[QT, tuple[int, ...]]]:
    reader = gguf.GGUFReader(path)
    return {t.name: (QT(t.tensor_type), tuple(int(d) for d in t.shape)) for t in reader.tensors}


def _generate(llama_cpp: ModuleType, path: Path, n: int = 6) -> list[int]:
    """Load, check the last logits are finite, and generate n tokens greedily."""
    llm = llama_cpp.Llama(str(path), n_ctx=64, n_batch=64, logits_all=True, verbose=False, seed=0)
    prompt = llm.tokenize(b"The model runs on", add_bos=True)
    llm.eval(prompt)
    logits = llm.scores[llm.n_tokens - 1]
    assert np.isfinite(logits).all()
    assert np.ptp(logits) > 0  # not all equal: the weights are actually used
    out = []
    for tok in llm.generate(prompt, temp=0.0, reset=True):
        out.append(tok)
        if len(out) == n:
            break
    assert len(out) == n and all(0 <= t < llm.n_vocab() for t in out)
    return out


# ----------------------------------------------------------------------------- pure Python


def test_tokenizer_is_deterministic_byte_level_bpe() -> None:
    tok = synthetic.tiny_tokenizer()
    assert len(tok) == TINY.n_vocab
    assert len(set(tok.tokens)) == len(tok.tokens)  # llama.cpp requires unique token texts
    assert len(set(tok.tokens[:256])) == 256 and tok.tokens[0] == "!"  # GPT-2 byte order
    assert "Ġthe" in tok.tokens and len(tok.merges) > 50
    for merge in tok.merges:  # every merge produces a token llama.cpp can look up
        a, b = merge.split(" ")
        assert a + b in tok.tokens
    specials = tok.tokens[tok.n_regular :]
    assert specials[:4] == ("<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>", "<｜begin▁of▁sentence｜>")
    assert "<think>" in specials and "</think>" in specials
    synthetic.tiny_tokenizer.cache_clear()
    assert synthetic.tiny_tokenizer() == tok


def test_large_vocab_has_real_special_ids_and_exact_size() -> None:
    vocab = synthetic._vocab_for(151936)
    assert len(vocab.tokens) == len(vocab.token_types) == 151936
    assert len(set(vocab.tokens)) == 151936
    assert (vocab.bos_id, vocab.eos_id) == (151646, 151643)  # as in DeepSeek-R1-Distill-Qwen
    assert vocab.tokens[151646] == "<｜begin▁of▁sentence｜>".encode()


def test_quant_types_1_5b_layout() -> None:
    types = quant_types(QWEN2_1_5B, "Q4_K_M")
    # 14 of 28 layers get Q6_K attn_v and ffn_down (use_more_bits), plus output.weight.
    assert Counter(types.values()) == {QT.Q4_K: 169, QT.Q6_K: 29, QT.F32: 141}
    assert types["output.weight"] == QT.Q6_K and types["token_embd.weight"] == QT.Q4_K
    assert [i for i in range(28) if types[f"blk.{i}.attn_v.weight"] == QT.Q6_K] == [
        0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 24, 25, 26, 27,
    ]
    s_types = quant_types(QWEN2_1_5B, "Q4_K_S")
    assert [i for i in range(28) if s_types[f"blk.{i}.attn_v.weight"] == QT.Q5_K] == [0, 1, 2, 3]
    assert [i for i in range(28) if s_types[f"blk.{i}.ffn_down.weight"] == QT.Q5_K] == [0, 1, 2]


def test_expected_size_of_published_1_5b_q4_k_m() -> None:
    # A llama.cpp-quantized random model of this shape measured 1,117,318,304 bytes.
    size = expected_file_size(QWEN2_1_5B, "Q4_K_M")
    assert abs(size - 1_117_318_304) / 1_117_318_304 < 0.01


def test_expected_size_is_fast_for_big_vocabularies() -> None:
    start = time.perf_counter()
    assert expected_file_size(QWEN2_7B, "Q4_K_M") > 4_500_000_000
    assert time.perf_counter() - start < 5.0


def test_synthetic_file_matches_expected_size_and_metadata(tmp_path: Path) -> None:
    path = write_synthetic_model(tmp_path / "m.gguf", ODD, "Q4_K_M", name="bench")
    assert path.stat().st_size == expected_file_size(ODD, "Q4_K_M", name="bench")
    reader = gguf.GGUFReader(path)
    name_field = reader.fields["general.name"]
    assert "synthetic" in bytes(name_field.parts[name_field.data[0]]).decode()
    tokens = reader.fields["tokenizer.ggml.tokens"]
    assert len(tokens.data) == ODD.n_vocab
    got = _types_in(path)
    assert {n: t for n, (t, _) in got.items()} == quant_types(ODD, "Q4_K_M")


# ----------------------------------------------------------------------------- with llama.cpp


def test_tiny_model_tokenizes_generates_and_chats(tmp_path: Path, llama_cpp: ModuleType) -> None:
    path = write_tiny_model(tmp_path / "tiny.gguf")
    llm = llama_cpp.Llama(str(path), n_ctx=256, verbose=False, seed=0)
    assert llm.n_vocab() == TINY.n_vocab

    tokens = llm.tokenize(ENGLISH.encode(), add_bos=False)
    assert llm.detokenize(tokens).decode() == ENGLISH
    assert len(tokens) < len(ENGLISH.encode()) * 0.7  # merges apply: fewer tokens than bytes
    assert llm.tokenize(b" the", add_bos=False) == [synthetic.tiny_tokenizer().tokens.index("Ġthe")]

    out = llm("The quick brown", max_tokens=5, temperature=0.0)
    assert out["usage"]["completion_tokens"] == 5

    # The GGUF's chat template (DeepSeek-R1-Distill-Qwen) is what create_chat_completion uses.
    assert llm.metadata["tokenizer.chat_template"] == synthetic.DEEPSEEK_R1_DISTILL_QWEN_TEMPLATE
    assert llm.chat_format == "chat_template.default"
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
    formatter = llama_cpp.llama_chat_format.Jinja2ChatFormatter(
        template=llm.metadata["tokenizer.chat_template"],
        eos_token="<｜end▁of▁sentence｜>",
        bos_token="<｜begin▁of▁sentence｜>",
    )
    prompt = formatter(messages=messages).prompt
    assert prompt == "<｜begin▁of▁sentence｜>Be brief.<｜User｜>Hi there<｜Assistant｜><think>\n"
    prompt_tokens = llm.tokenize(prompt.encode(), add_bos=False, special=True)
    special_ids = {llm.tokenize(s.encode(), add_bos=False, special=True)[0] for s in ("<｜User｜>", "<think>")}
    assert special_ids <= set(prompt_tokens)  # each special token is one token
    reply = llm.create_chat_completion(messages=messages, max_tokens=3, temperature=0.0)
    assert reply["usage"]["prompt_tokens"] == len(prompt_tokens)
    assert reply["usage"]["completion_tokens"] >= 1


@pytest.mark.parametrize("quant", ["Q4_K_M", "Q4_K_S"])
def test_tiny_model_quantizes_loads_and_generates(
    tmp_path: Path, llama_cpp: ModuleType, quant: str
) -> None:
    src = write_tiny_model(tmp_path / "tiny-f16.gguf", dtype="F16")
    dst = tmp_path / f"tiny-{quant}.gguf"
    native.quantize_model(src, dst, quant)
    types = {n: t for n, (t, _) in _types_in(dst).items()}
    assert types == quant_types(TINY, quant)
    assert sum(t in (QT.Q4_K, QT.Q5_K, QT.Q6_K) for t in types.values()) == 2 + 7 * TINY.n_layers
    _generate(llama_cpp, dst)


@pytest.mark.parametrize("quant", ["Q4_K_M", "Q4_K_S", "Q4_0", "Q8_0", "Q5_K_M", "Q6_K"])
@pytest.mark.parametrize(
    ("shape", "dtype"), [(DEEP, "F16"), (ODD, "F32"), (LLAMA, "F16")], ids=["deep28", "odd", "llama"]
)
def test_quant_types_and_synthetic_layout_match_llama_cpp(
    tmp_path: Path, llama_cpp: ModuleType, shape: ModelShape, dtype: str, quant: str
) -> None:
    src = write_tiny_model(tmp_path / "src.gguf", shape=shape, dtype=dtype)
    ref = tmp_path / "ref.gguf"
    native.quantize_model(src, ref, quant)
    ref_tensors = _types_in(ref)
    assert {n: t for n, (t, _) in ref_tensors.items()} == quant_types(shape, quant)

    syn = write_synthetic_model(tmp_path / "syn.gguf", shape, quant)
    assert _types_in(syn) == ref_tensors  # same names, shapes and types
    assert [t.name for t in gguf.GGUFReader(syn).tensors] == [t.name for t in gguf.GGUFReader(ref).tensors]
    assert syn.stat().st_size == expected_file_size(shape, quant)


@pytest.mark.parametrize(
    ("shape", "quant"),
    [(TINY, "Q4_K_M"), (TINY, "Q4_K_S"), (TINY, "Q4_0"), (TINY, "Q8_0"), (ODD, "Q4_K_M"), (BIG_VOCAB, "Q4_K_M")],
    ids=["tiny-q4km", "tiny-q4ks", "tiny-q40", "tiny-q80", "odd-q4km", "bigvocab-q4km"],
)
def test_synthetic_model_generates(
    tmp_path: Path, llama_cpp: ModuleType, shape: ModelShape, quant: str
) -> None:
    path = write_synthetic_model(tmp_path / "syn.gguf", shape, quant)
    _generate(llama_cpp, path)
    if shape is BIG_VOCAB:
        llm = llama_cpp.Llama(str(path), n_ctx=32, verbose=False, vocab_only=True)
        assert (llm.token_bos(), llm.token_eos()) == (151646, 151643)
        assert llm.detokenize(llm.tokenize(ENGLISH.encode(), add_bos=False)).decode() == ENGLISH
