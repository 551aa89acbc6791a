"""Hostile files through the real CLI (issue 16): crafted GGUF headers, FIFOs, devices and symlink
loops where files are expected, sysroots built to exhaust memory, and bench reports of the wrong shape.

Every attack gets one `error:` line and a non-zero exit (or, for `detect`, a degraded answer), never
a traceback, a hang, a MemoryError or llama.cpp's silent abort (exit 134). Files are crafted here:
the tiny test model with its metadata rewritten, FIFOs from os.mkfifo, links from os.symlink.
"""

from __future__ import annotations

import json
import os
import resource
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import cli_env, run_cli, write_tree

from edgellm.store import synthetic

TIMEOUT_S = 60

# --- crafting GGUF metadata ----------------------------------------------------------------------

_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_UINT32, _INT32, _STRING, _ARRAY = 4, 5, 8, 9


def _skip_value(data: bytes, pos: int, kind: int) -> int:
    if kind in _SCALAR_SIZES:
        return pos + _SCALAR_SIZES[kind]
    if kind == _STRING:
        (length,) = struct.unpack_from("<Q", data, pos)
        return pos + 8 + length
    item_kind, count = struct.unpack_from("<IQ", data, pos)
    pos += 12
    for _ in range(count):
        pos = _skip_value(data, pos, item_kind)
    return pos


def _read_key(data: bytes, pos: int) -> tuple[str, int]:
    (length,) = struct.unpack_from("<Q", data, pos)
    return data[pos + 8 : pos + 8 + length].decode(), pos + 8 + length


def u32(value: int) -> bytes:
    return struct.pack("<II", _UINT32, value)


def i32(value: int) -> bytes:
    return struct.pack("<Ii", _INT32, value)


def text(value: str) -> bytes:
    raw = value.encode()
    return struct.pack("<IQ", _STRING, len(raw)) + raw


def u32_array(values: list[int]) -> bytes:
    return struct.pack("<IIQ", _ARRAY, _UINT32, len(values)) + struct.pack(f"<{len(values)}I", *values)


def string_array(items: list[str]) -> bytes:
    encoded = [item.encode() for item in items]
    return struct.pack("<IIQ", _ARRAY, _STRING, len(encoded)) + b"".join(struct.pack("<Q", len(b)) + b for b in encoded)


def craft(source: Path, target: Path, changes: dict[str, bytes | None], *, arch: str | None = None) -> Path:
    """Copy a GGUF with metadata keys set to (type + value bytes), added, or removed (None), and
    optionally another architecture (its `{arch}.` keys renamed; changes name the new keys).

    Tensor infos and data are copied as they are; only the data section's start moves (re-aligned).
    """
    data = source.read_bytes()
    _, n_tensors, n_kv = struct.unpack_from("<IQQ", data, 4)
    pos = 24
    entries: dict[str, bytes | None] = {}
    for _ in range(n_kv):
        key, value_start = _read_key(data, pos)
        (kind,) = struct.unpack_from("<I", data, value_start)
        pos = _skip_value(data, value_start + 4, kind)
        entries[key] = data[value_start:pos]
    infos_start = pos
    for _ in range(n_tensors):
        _, pos = _read_key(data, pos)
        (n_dims,) = struct.unpack_from("<I", data, pos)
        pos += 4 + 8 * n_dims + 4 + 8
    infos, body = data[infos_start:pos], data[-(-pos // 32) * 32 :]
    if arch is not None:
        old = entries["general.architecture"][12:].decode()  # type: ignore[index]
        entries = {(arch + key[len(old):] if key.startswith(old + ".") else key): value for key, value in entries.items()}
        entries["general.architecture"] = text(arch)
    entries.update(changes)
    kvs = [(key.encode(), value) for key, value in entries.items() if value is not None]
    head = b"GGUF" + struct.pack("<IQQ", 3, n_tensors, len(kvs))
    head += b"".join(struct.pack("<Q", len(key)) + key + value for key, value in kvs) + infos
    target.write_bytes(head + b"\0" * (-len(head) % 32) + body)
    return target


# --- running the CLI -----------------------------------------------------------------------------


def _limit_memory() -> None:
    # A regression must fail as a MemoryError in the child, not by swapping the test machine to death.
    resource.setrlimit(resource.RLIMIT_AS, (4 * 1024**3, 4 * 1024**3))


def cli(*args: str, cwd: Path | None = None, limit_memory: bool = False) -> subprocess.CompletedProcess[bytes]:
    """`python -m edgellm ARGS` with empty stdin, bounded in time (and memory when asked)."""
    return subprocess.run(
        [sys.executable, "-m", "edgellm", *args], input=b"", capture_output=True, timeout=TIMEOUT_S,
        env=cli_env(), cwd=cwd, preexec_fn=_limit_memory if limit_memory else None, check=False,
    )


def one_line_error(result: subprocess.CompletedProcess[bytes], exit_code: int = 1) -> str:
    """The single `error:` line of a failed command (a `hint:` line may follow)."""
    stderr = result.stderr.decode()
    lines = stderr.strip().splitlines()
    assert result.returncode == exit_code, (result.returncode, stderr)
    assert "Traceback" not in stderr and result.stdout == b""
    assert len(lines) in (1, 2) and lines[0].startswith("error: "), stderr
    assert all(line.startswith("hint: ") for line in lines[1:]), stderr
    return lines[0]


# --- 1. crafted hyperparameters ------------------------------------------------------------------

# Each reached a llama.cpp GGML_ASSERT (exit 134, empty stderr), was accepted by `plan`, or was
# refused with a wrong reason before the header check learned llama.cpp's rules.
CRAFTED_HEADERS = [
    ("no-layers", {"qwen2.block_count": u32(0)}, "block_count is 0; expected 1 to 512"),
    ("too-many-layers", {"qwen2.block_count": u32(513)}, "block_count is 513; expected 1 to 512"),
    ("layers-as-string", {"qwen2.block_count": text("2")}, "block_count is stored as string '2'"),
    ("negative-layers", {"qwen2.block_count": i32(-1)}, "block_count is stored as int32 -1"),
    ("no-heads", {"qwen2.attention.head_count": u32(0)}, "head_count is 0"),
    ("no-kv-heads", {"qwen2.attention.head_count_kv": u32(0)}, "head_count_kv is 0"),
    ("kv-heads-do-not-divide", {"qwen2.attention.head_count_kv": u32(3)}, "head_count_kv (3) does not divide head_count (4)"),
    ("huge-heads", {"qwen2.attention.head_count": u32(2**31)}, "head_count is 2147483648"),
    ("heads-do-not-divide-width", {"qwen2.attention.head_count": u32(3), "qwen2.attention.head_count_kv": u32(1)},
     "embedding_length (256) is not a multiple of head_count (3)"),
    ("zero-width", {"qwen2.embedding_length": u32(0)}, "embedding_length is 0"),
    ("zero-ffn", {"qwen2.feed_forward_length": u32(0)}, "feed_forward_length is 0"),
    ("zero-context", {"qwen2.context_length": u32(0)}, "context_length is 0"),
    ("key-value-heads-differ", {"qwen2.attention.key_length": u32(64), "qwen2.attention.value_length": u32(32)},
     "value_length (32) differs from key_length (64)"),
    ("partial-rope", {"qwen2.rope.dimension_count": u32(32)}, "rope.dimension_count (32) differs from the head size (64)"),
    ("unknown-rope-scaling", {"qwen2.rope.scaling.type": text("bogus")}, "rope.scaling.type is 'bogus'"),
    ("too-many-experts", {"qwen2.expert_count": u32(2000)}, "expert_count is 2000; expected 0 to 1024"),
    ("experts-used-without-experts", {"qwen2.expert_used_count": u32(2)}, "expert_used_count (2) exceeds expert_count (0)"),
    ("nextn-beyond-layers", {"qwen2.nextn_predict_layers": u32(5)}, "nextn_predict_layers is 5; expected 0 to 2"),
    ("per-layer-heads-with-a-zero", {"qwen2.attention.head_count": u32_array([4, 0])}, "head_count holds 0"),
    ("per-layer-heads-wrong-length", {"qwen2.attention.head_count": u32_array([4, 4, 4])}, "head_count has 3 values for 2 layers"),
    ("no-vocabulary", {"tokenizer.ggml.tokens": None}, "tokenizer.ggml.tokens is missing"),
    ("alignment-not-a-power-of-two", {"general.alignment": u32(3)}, "general.alignment 3 is not a power of two"),
]


@pytest.mark.parametrize(("name", "changes", "reason"), CRAFTED_HEADERS, ids=[case[0] for case in CRAFTED_HEADERS])
def test_crafted_hyperparameters_are_one_line_errors(tiny_f32: Path, tmp_path: Path, name: str,
                                                     changes: dict[str, bytes | None], reason: str) -> None:
    model = craft(tiny_f32, tmp_path / f"{name}.gguf", changes)
    for args in (("run", "-m", str(model), "-n", "2", "hi"), ("plan", str(model))):
        line = one_line_error(cli(*args))
        assert str(model) in line and reason in line, line


def test_repeated_vocabulary_token_is_refused(tiny_f32: Path, tmp_path: Path) -> None:
    tokens = list(synthetic.tiny_tokenizer().tokens)
    tokens[300] = tokens[301]  # llama.cpp's vocabulary loader asserts every token is unique
    model = craft(tiny_f32, tmp_path / "repeated-token.gguf", {"tokenizer.ggml.tokens": string_array(tokens)})
    line = one_line_error(cli("run", "-m", str(model), "-n", "2", "hi"))
    assert f"tokenizer.ggml.tokens lists {tokens[301]!r} twice" in line


def test_per_layer_head_counts_are_read_not_refused(tiny_f32: Path, tmp_path: Path) -> None:
    # Valid per llama.cpp's get_key_or_arr (one value per layer); the reader used to call it missing.
    model = craft(tiny_f32, tmp_path / "per-layer.gguf", {"qwen2.attention.head_count": u32_array([4, 4]),
                                                          "qwen2.attention.head_count_kv": u32_array([2, 2])})
    result = cli("run", "-m", str(model), "-n", "2", "--temp", "0", "hi")
    assert result.returncode == 0, result.stderr.decode()
    plan = json.loads(cli("plan", str(model), "--json").stdout)
    assert plan["fits"]


# --- 2. files that are not files -----------------------------------------------------------------


def test_model_that_is_a_fifo_is_refused_without_opening_it(tmp_path: Path) -> None:
    fifo = tmp_path / "model.gguf"
    os.mkfifo(fifo)  # opening it for reading would block until a writer comes: forever
    for args in (("run", "-m", str(fifo), "hi"), ("plan", str(fifo)), ("serve", "-m", str(fifo), "--port", "0")):
        line = one_line_error(cli(*args))
        assert line == f"error: {fifo}: is a FIFO (named pipe), not a .gguf file", line


def test_model_that_is_a_device_is_refused() -> None:
    line = one_line_error(cli("run", "-m", "/dev/zero", "hi"))
    assert line == "error: /dev/zero: is a character device, not a .gguf file"


def test_symlink_loop_and_dangling_link_say_what_they_are(tmp_path: Path) -> None:
    os.symlink("loop", tmp_path / "loop")
    os.symlink("loop.gguf", tmp_path / "loop.gguf")
    os.symlink("missing-target.gguf", tmp_path / "dangling.gguf")
    for args in (("run", "-m", str(tmp_path / "loop.gguf"), "hi"), ("plan", "loop"), ("run", "-m", "loop", "hi")):
        line = one_line_error(cli(*args, cwd=tmp_path))
        assert line.endswith(": symlink loop (too many levels of symbolic links)"), line
    line = one_line_error(cli("plan", str(tmp_path / "dangling.gguf")))
    assert "broken symlink (its target missing-target.gguf does not exist)" in line


def _fifo(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    os.mkfifo(path)


def _zero_link(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    os.symlink("/dev/zero", path)


BASE_SYSROOT = {
    "proc/cpuinfo": "processor : 0\nprocessor : 1\n",
    "proc/meminfo": "MemTotal: 4096 kB\n",
    "sys/devices/system/cpu/online": "0-1\n",
    "sys/class/thermal/thermal_zone0/type": "cpu-thermal\n",
    "sys/class/thermal/thermal_zone0/temp": "45000\n",
}


@pytest.mark.parametrize("attack", ["huge-cpu-range", "cpuinfo-is-dev-zero", "cpuinfo-is-a-fifo", "thermal-is-a-fifo",
                                    "meminfo-5000-digits", "cpuinfo-ids-too-big"])
def test_detect_survives_hostile_sysroots(tmp_path: Path, attack: str) -> None:
    root = write_tree(tmp_path / "root", BASE_SYSROOT)
    if attack == "huge-cpu-range":
        (root / "sys/devices/system/cpu/online").write_text("0-4000000000\n")  # was a MemoryError
    elif attack == "cpuinfo-is-dev-zero":
        _zero_link(root / "proc/cpuinfo")  # was a MemoryError
    elif attack == "cpuinfo-is-a-fifo":
        _fifo(root / "proc/cpuinfo")  # was a hang
    elif attack == "thermal-is-a-fifo":
        _fifo(root / "sys/class/thermal/thermal_zone0/temp")  # was a hang
    elif attack == "meminfo-5000-digits":
        (root / "proc/meminfo").write_text(f"MemTotal: {'9' * 5000} kB\n")  # was a ValueError from int()
    elif attack == "cpuinfo-ids-too-big":
        (root / "proc/cpuinfo").write_text(f"processor : {'9' * 5000}\nprocessor : ²\n")
        (root / "sys/devices/system/cpu/online").unlink()
    result = cli("detect", "--sysroot", str(root), "--json", limit_memory=True)
    assert result.returncode == 0, result.stderr.decode()
    device = json.loads(result.stdout)
    assert device["cpu_count"] <= 2
    if attack == "huge-cpu-range":
        assert device["cpu_count"] == 2  # the junk list is unknown; cpuinfo's processors are used
    if attack == "thermal-is-a-fifo":
        assert device["thermal"] == [{"zone": "thermal_zone0", "type": "cpu-thermal", "celsius": None}]


# --- bench report and bench options --------------------------------------------------------------

GOOD_ROW = {"test": "tg8", "threads": 2, "cores": [0, 1], "tps_mean": 10.0, "tps_std": 0.5, "thermal": {"temp_max_c": 50.0}}
WRONG_SHAPES = [
    ("[]", "the top level is a list, not an object"),
    ("{}", "no 'device' object"),
    ("5", "the top level is the number 5, not an object"),
    ('{"results": 5, "device": {}}', "'results' is the number 5, not a list"),
    ('{"device": "pi", "results": []}', "'device' is the string 'pi', not an object"),
    ('{"device": {"board": 7}, "results": []}', "device.board is the number 7, not a string"),
    ('{"device": {}, "results": [{"test": 1}]}', "results[0].test is the number 1, not a string"),
    ('{"device": {}, "results": [{"test": "tg8"}]}', "results[0] has no 'threads'"),
    ('{"device": {}, "results": [7]}', "results[0] is the number 7, not an object"),
    (json.dumps({"device": {}, "results": [dict(GOOD_ROW, tps_mean="fast")]}), "results[0].tps_mean is the string 'fast', not a number"),
    (json.dumps({"device": {}, "results": [dict(GOOD_ROW, tps_std=10**400)]}), "results[0].tps_std is the number"),
    (json.dumps({"device": {}, "results": [dict(GOOD_ROW, cores=["a"])]}), "results[0].cores is a list, not a list of CPU ids"),
    (json.dumps({"device": {}, "results": [dict(GOOD_ROW, thermal={"temp_max_c": "hot"})]}),
     "results[0].thermal.temp_max_c is the string 'hot', not a number"),
    ("[" * 100_000 + "]" * 100_000, "not JSON (nested too deeply)"),
]


@pytest.mark.parametrize(("content", "reason"), WRONG_SHAPES, ids=[f"shape{i}" for i in range(len(WRONG_SHAPES))])
def test_bench_report_of_the_wrong_shape_is_one_line_error(tmp_path: Path, content: str, reason: str) -> None:
    path = tmp_path / "result.json"
    path.write_text(content)
    line = one_line_error(run_cli("bench", "report", str(path), timeout=TIMEOUT_S), exit_code=2)
    assert line.startswith(f"error: {path}: ") and reason in line, line


def test_bench_report_reads_a_valid_minimal_report(tmp_path: Path) -> None:
    path = tmp_path / "result.json"
    path.write_text(json.dumps({"device": {"board": "Pi"}, "model": "m", "results": [GOOD_ROW]}))
    result = run_cli("bench", "report", str(path), "--json", timeout=TIMEOUT_S)
    assert result.returncode == 0, result.stderr.decode()
    assert json.loads(result.stdout)["rows"] == [["Pi", "m", "2", "0,1", "10.00 ± 0.50", "50"]]


def test_bench_report_refuses_fifos_and_devices(tmp_path: Path) -> None:
    fifo = tmp_path / "result.json"
    os.mkfifo(fifo)
    line = one_line_error(run_cli("bench", "report", str(fifo), timeout=TIMEOUT_S), exit_code=2)
    assert line == f"error: {fifo}: is a FIFO (named pipe), not a JSON file"
    line = one_line_error(run_cli("bench", "report", "/dev/zero", timeout=TIMEOUT_S), exit_code=2)
    assert line == "error: /dev/zero: is a character device, not a JSON file"


@pytest.mark.parametrize(("option", "value", "reason"), [
    ("--cool-to", "nan", "--cool-to nan: expected a temperature from 1 to 150 °C"),
    ("--cool-to", "inf", "--cool-to inf: expected a temperature"),
    ("--cool-to", "-5", "--cool-to -5.0: expected a temperature"),
    ("--duration", "9" * 400, "--duration inf: expected a positive, finite duration"),
])
def test_bench_refuses_non_finite_and_meaningless_floats(tiny_f32: Path, option: str, value: str, reason: str) -> None:
    result = run_cli("bench", "-m", str(tiny_f32), "-p", "8", "-n", "2", "-r", "1", option, value, timeout=TIMEOUT_S)
    assert reason in one_line_error(result, exit_code=2)


# --- ls and rm with broken cache entries ---------------------------------------------------------


def test_ls_skips_what_cannot_be_gguf_and_rm_removes_broken_links(tiny_q4km: Path) -> None:
    folder = Path(os.environ["HF_HOME"]) / "hub" / "models--someone--tiny-GGUF"
    snapshot = folder / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (folder / "blobs").mkdir()
    (folder / "blobs" / "good").write_bytes(tiny_q4km.read_bytes())
    os.symlink("../../blobs/good", snapshot / "tiny-Q4_K_M.gguf")
    (snapshot / "empty-Q8_0.gguf").write_bytes(b"")  # an interrupted copy
    (snapshot / "html-Q6_K.gguf").write_text("<html>rate limited</html>")  # a proxy's error page
    os.symlink("../../blobs/deleted-by-hand", snapshot / "tiny-Q4_K_S.gguf")  # the blob was rm'd by hand

    listed = json.loads(run_cli("ls", "--json", timeout=TIMEOUT_S).stdout)
    assert [d["file"] for d in listed] == ["tiny-Q4_K_M.gguf"]

    result = run_cli("rm", "someone/tiny-GGUF:Q4_K_S", "-y", "--json", timeout=TIMEOUT_S)
    assert result.returncode == 0, result.stderr.decode()
    removed = json.loads(result.stdout)
    assert [r["file"] for r in removed["removed"]] == ["tiny-Q4_K_S.gguf"] and removed["freed_bytes"] == 0
    assert not os.path.lexists(snapshot / "tiny-Q4_K_S.gguf")

    result = run_cli("rm", "someone/tiny-GGUF", "-y", "--json", timeout=TIMEOUT_S)
    assert result.returncode == 0, result.stderr.decode()
    removed = json.loads(result.stdout)
    assert sorted(r["file"] for r in removed["removed"]) == ["empty-Q8_0.gguf", "html-Q6_K.gguf", "tiny-Q4_K_M.gguf"]
    assert removed["freed_bytes"] == tiny_q4km.stat().st_size + len("<html>rate limited</html>")
    assert not (folder / "snapshots").exists() or not any((folder / "snapshots").rglob("*"))
