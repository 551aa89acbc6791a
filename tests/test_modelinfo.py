"""Reading GGUF headers without loading weights, and refusing files llama.cpp could crash on."""

from __future__ import annotations

import os
from pathlib import Path

import gguf
import numpy as np
import pytest
from conftest import run_cli

from edgellm.errors import ModelFileError
from edgellm.store import synthetic
from edgellm.store.gguf import read_gguf


def test_header_facts_of_a_quantized_model(tiny_q4km: Path) -> None:
    info = read_gguf(tiny_q4km)
    shape = synthetic.TINY
    assert info.arch == "qwen2" and info.quant == "Q4_K_M"
    assert (info.n_layers, info.n_embd, info.n_head, info.n_head_kv, info.n_ff) == (
        shape.n_layers, shape.n_embd, shape.n_head, shape.n_head_kv, shape.n_ff)
    assert info.head_dim_k == shape.n_embd // shape.n_head
    assert info.n_vocab == shape.n_vocab and info.context_length == shape.context_length
    assert 0 < info.weights_bytes < info.file_size and info.bytes_per_token < info.weights_bytes
    assert info.thinks and not info.tied_embeddings


def test_header_of_the_real_15b_shape_matches_the_published_numbers(tmp_path: Path) -> None:
    # Only the header is needed: write the synthetic file's layout and check the reader's arithmetic.
    size = synthetic.expected_file_size(synthetic.QWEN2_1_5B, "Q4_K_M")
    assert abs(size - 1_117_318_304) / 1_117_318_304 < 0.01
    info_kv = 28 * 2 * (128 + 128) * 2
    assert info_kv == 28 * 1024  # 28 KiB per token at f16, as REFERENCE.md says


def test_truncated_file_is_refused_before_llama_cpp(tiny_q4km: Path, tmp_path: Path) -> None:
    data = tiny_q4km.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: len(data) - 1000])
    with pytest.raises(ModelFileError, match="truncated GGUF: tensor data needs"):
        read_gguf(cut)
    cut.write_bytes(data[:200])
    with pytest.raises(ModelFileError, match="truncated GGUF header"):
        read_gguf(cut)


def test_not_gguf_missing_and_directory(tmp_path: Path) -> None:
    bogus = tmp_path / "model.gguf"
    bogus.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    with pytest.raises(ModelFileError, match="not a GGUF file"):
        read_gguf(bogus)
    with pytest.raises(ModelFileError, match="no such file"):
        read_gguf(tmp_path / "absent.gguf")
    with pytest.raises(ModelFileError, match="is a directory"):
        read_gguf(tmp_path)


def test_corrupt_counts_are_refused(tiny_q4km: Path, tmp_path: Path) -> None:
    data = bytearray(tiny_q4km.read_bytes())
    data[8:16] = (2**40).to_bytes(8, "little")  # n_tensors
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="corrupt GGUF header"):
        read_gguf(bad)


def test_unsupported_architecture(tmp_path: Path) -> None:
    path = tmp_path / "bert.gguf"
    writer = gguf.GGUFWriter(str(path), "bert")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelFileError, match="unsupported architecture 'bert'"):
        read_gguf(path)


def test_cli_messages_for_bad_files(tiny_q4km: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_q4km.read_bytes()[:-500])
    for target in (cut, tmp_path / "absent.gguf"):
        result = run_cli("run", "-m", str(target), "hello")
        lines = result.stderr.decode().strip().splitlines()
        assert result.returncode == 1
        assert lines[0].startswith("error: ") and len(lines) <= 2 and lines[-1].startswith(("hint:", "error:"))
        assert result.stdout == b""


def test_non_regular_files_are_refused_before_opening(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo.gguf")  # open() would block: read_gguf must not open it
    with pytest.raises(ModelFileError, match="is a FIFO"):
        read_gguf(tmp_path / "fifo.gguf")
    os.symlink("loop.gguf", tmp_path / "loop.gguf")
    with pytest.raises(ModelFileError, match="symlink loop"):
        read_gguf(tmp_path / "loop.gguf")


def test_per_layer_arrays_and_llama_cpp_limits(tiny_f32: Path, tmp_path: Path) -> None:
    from test_hardening_files import craft, u32, u32_array

    varied = craft(tiny_f32, tmp_path / "varied.gguf", {"qwen2.attention.head_count_kv": u32_array([1, 2])})
    info = read_gguf(varied)
    assert (info.n_head, info.n_head_kv) == (4, 2)  # planned with the largest KV cache
    for key, value, message in (("qwen2.block_count", u32(0), "block_count is 0"),
                                ("qwen2.expert_count", u32(4), "expert_used_count is 0 \\(or missing\\) with 4 experts")):
        with pytest.raises(ModelFileError, match=message):
            read_gguf(craft(tiny_f32, tmp_path / "bad.gguf", {key: value}))
    # phi3 may rotate part of a head, but ggml's RoPE needs pairs inside it.
    assert read_gguf(craft(tiny_f32, tmp_path / "phi3.gguf", {"phi3.rope.dimension_count": u32(32)}, arch="phi3")).arch == "phi3"
    for odd in (33, 66):
        with pytest.raises(ModelFileError, match=f"rope.dimension_count \\({odd}\\) must be even and at most the head size \\(64\\)"):
            read_gguf(craft(tiny_f32, tmp_path / "phi3.gguf", {"phi3.rope.dimension_count": u32(odd)}, arch="phi3"))
