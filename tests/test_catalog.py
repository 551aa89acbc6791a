"""The catalog data, spec parsing and the planner's quant choice (pure logic, real captures)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import DATA

from edgellm.device.hardware import detect
from edgellm.device.profiles import load_profiles, select_profile
from edgellm.errors import ModelNotFoundError
from edgellm.plan.planner import make_plan
from edgellm.plan.quant import QuantCandidate, choose_quant
from edgellm.store import synthetic
from edgellm.store.catalog import find_entry, load_catalog, quant_of_filename, quants_in_files
from edgellm.store.refs import ModelRef, parse_spec

REQUIRED = ("deepseek-r1-1.5b", "deepseek-r1-7b", "qwen2.5-0.5b", "qwen2.5-1.5b", "qwen2.5-3b", "llama3.2-1b", "llama3.2-3b")


def test_catalog_has_the_required_models_with_q4_k_m_and_q4_k_s() -> None:
    catalog = load_catalog()
    for name in REQUIRED:
        assert {"Q4_K_M", "Q4_K_S"} <= set(catalog[name].files), name
    assert len({e.shape.arch + e.repo.split("/")[1].split("-")[0] for e in catalog.values()}) >= 4  # a fourth family
    r1 = catalog["deepseek-r1-7b"]
    assert r1.repo == "bartowski/DeepSeek-R1-Distill-Qwen-7B-GGUF"
    assert r1.files["Q4_K_M"].filename == "DeepSeek-R1-Distill-Qwen-7B-Q4_K_M.gguf" and r1.files["Q4_K_M"].size == 4683073504
    assert r1.files["Q4_K_S"].size == 4457768928


def test_every_profile_default_model_is_in_the_catalog() -> None:
    for profile in load_profiles():
        assert find_entry(profile.default_model) is not None, profile.name


@pytest.mark.parametrize("name", list(load_catalog()))
def test_catalog_shape_agrees_with_the_catalog_sizes(name: str) -> None:
    """A file of the catalog's shape, with llama.cpp's tensor types, has the catalog's size (±1%):
    a wrong layer count or hidden size would be off by far more."""
    entry = load_catalog()[name]
    shape = entry.shape
    for quant, file in entry.files.items():
        expected = synthetic.expected_file_size(shape, quant)
        assert abs(file.size - expected) / expected < 0.01, (name, quant, file.size, expected)


def test_catalog_model_info_plans_like_the_reference_kv_numbers() -> None:
    info = find_entry("deepseek-r1-1.5b").model_info("Q4_K_M")  # type: ignore[union-attr]
    assert info.kv_bytes_per_token() == 28 * 1024  # REFERENCE: 28 KiB per token at f16
    assert info.bytes_per_token < info.weights_bytes  # untied: the embedding table is not read per token


@pytest.mark.parametrize(("filename", "quant"), [
    ("DeepSeek-R1-Distill-Qwen-1.5B-Q4_K_M.gguf", "Q4_K_M"),
    ("qwen2.5-0.5b-instruct-q4_k_m.gguf", "Q4_K_M"),
    ("Llama-3.2-1B-Instruct-IQ4_XS.gguf", "IQ4_XS"),
    ("model.Q8_0.gguf", "Q8_0"),
    ("Phi-3-mini-4k-instruct-fp16.gguf", None),
    ("Qwen2.5-7B-Instruct-Q4_K_M-00001-of-00002.gguf", None),
    ("README.md", None),
])
def test_quant_of_filename(filename: str, quant: str | None) -> None:
    assert quant_of_filename(filename) == quant


def test_quants_in_files_ignores_other_files() -> None:
    assert quants_in_files(["README.md", "a-Q4_0.gguf", "a-Q4_K_M.gguf", "config.json"]) == {"Q4_0": "a-Q4_0.gguf", "Q4_K_M": "a-Q4_K_M.gguf"}


def test_parse_spec_forms(tmp_path: Path) -> None:
    local = tmp_path / "x.gguf"
    local.write_bytes(b"GGUF")
    assert parse_spec(str(local)) == local
    assert isinstance(parse_spec("missing-file.gguf"), Path)
    ref = parse_spec("deepseek-r1-1.5b:q4_k_s")
    assert isinstance(ref, ModelRef) and ref.repo == "bartowski/DeepSeek-R1-Distill-Qwen-1.5B-GGUF" and ref.quant == "Q4_K_S"
    ref = parse_spec("bartowski/Qwen2.5-0.5B-Instruct-GGUF:Q8_0")
    assert isinstance(ref, ModelRef) and ref.entry is not None and ref.entry.name == "qwen2.5-0.5b" and ref.quant == "Q8_0"
    ref = parse_spec("someone/some-GGUF/sub/file-Q4_0.gguf", revision="v1")
    assert isinstance(ref, ModelRef) and ref.filename == "sub/file-Q4_0.gguf" and ref.quant == "Q4_0" and ref.revision == "v1"
    for name in ("qwen2.5:0.5b", "qwen2.5:0.5B", "llama3.2", "llama3.2:latest"):  # Ollama's library names
        ref = parse_spec(name)
        assert isinstance(ref, ModelRef) and ref.entry is not None and ref.quant is None, name
        assert ref.entry.name == ("qwen2.5-0.5b" if name.startswith("qwen") else "llama3.2-3b")
    with pytest.raises(ModelNotFoundError, match="not a model file or a model edgellm knows") as failure:
        parse_spec("not-a-model")
    assert failure.value.hint is not None and "edgellm models" in failure.value.hint


def _candidates(name: str, downloaded: frozenset[str] = frozenset()) -> list[QuantCandidate]:
    entry = find_entry(name)
    assert entry is not None
    return [QuantCandidate(q, f.filename, f.size, q in downloaded, entry.model_info(q)) for q, f in entry.files.items()]


def test_choose_quant_follows_the_profile_and_the_budget() -> None:
    device = detect(DATA / "raspberry-pi-5")
    profile, _ = select_profile(device)
    assert choose_quant(_candidates("deepseek-r1-7b"), device, profile).chosen.quant == "Q4_K_M"  # type: ignore[union-attr]

    entry = find_entry("deepseek-r1-7b")
    assert entry is not None
    least = {q: make_plan(entry.model_info(q), device, profile, mem_budget=1).total_bytes for q in entry.files}
    tight = least["Q4_K_S"] + 1024**2
    choice = choose_quant(_candidates("deepseek-r1-7b"), device, profile, mem_budget=tight)
    assert choice.chosen is not None and choice.chosen.quant == "Q4_K_S"
    assert choice.fits == {"Q4_K_M": False, "Q4_K_S": True, "Q4_0": True, "Q8_0": False}

    none = choose_quant(_candidates("deepseek-r1-7b"), device, profile, mem_budget=2 * 1024**3)
    assert none.chosen is None and "no quant fits" in none.reason


def test_choose_quant_prefers_a_downloaded_copy_only_when_asked() -> None:
    device = detect(DATA / "raspberry-pi-5")
    profile, _ = select_profile(device)
    candidates = _candidates("qwen2.5-1.5b", downloaded=frozenset({"Q4_0"}))
    assert choose_quant(candidates, device, profile).chosen.quant == "Q4_K_M"  # type: ignore[union-attr]
    assert choose_quant(candidates, device, profile, prefer_downloaded=True).chosen.quant == "Q4_0"  # type: ignore[union-attr]


def test_choose_quant_without_a_shape_uses_file_size() -> None:
    device = detect(DATA / "raspberry-pi-5")
    profile, _ = select_profile(device)
    big = QuantCandidate("Q8_0", "m-Q8_0.gguf", 3 * 1024**3)
    small = QuantCandidate("Q4_0", "m-Q4_0.gguf", 1024**3)
    assert choose_quant([big, small], device, profile, mem_budget=2 * 1024**3).chosen == small


def test_ollama_library_names_are_catalog_aliases() -> None:
    from edgellm.store.catalog import load_catalog

    names = {alias: entry.name for entry in load_catalog().values() for alias in entry.ollama}
    assert names["deepseek-r1:1.5b"] == "deepseek-r1-1.5b"
    assert names["qwen2.5:0.5b"] == "qwen2.5-0.5b"
    assert names["llama3.2"] == names["llama3.2:3b"] == "llama3.2-3b"  # Ollama's llama3.2 is the 3b
    assert names["smollm2:360m"] == "smollm2-360m"


@pytest.mark.parametrize(("value", "message"), [
    ('"x:1b"', "must be a list of strings"),
    ('["X:1B"]', "is not an Ollama name"),
    ('["x:latest"]', "is not an Ollama name"),
])
def test_a_bad_ollama_alias_is_a_catalog_error(value: str, message: str) -> None:
    from edgellm.store.catalog import CatalogError, parse_catalog

    text = ('[models.a]\nrepo = "o/a"\nollama = ' + value + '\nshape = { arch = "llama", layers = 1, hidden = 8, heads = 1, '
            'kv_heads = 1, ffn = 8, vocab = 8, context = 8, tied_embeddings = true }\n[models.a.files]\n'
            'Q4_0 = { file = "a-Q4_0.gguf", size = 1 }\n')
    with pytest.raises(CatalogError, match=message):
        parse_catalog(text)


def test_an_ollama_alias_names_one_entry_only() -> None:
    from edgellm.store.catalog import CatalogError, parse_catalog

    entry = ('[models.{n}]\nrepo = "o/{n}"\nollama = ["x:1b"]\nshape = {{ arch = "llama", layers = 1, hidden = 8, heads = 1, '
             'kv_heads = 1, ffn = 8, vocab = 8, context = 8, tied_embeddings = true }}\n[models.{n}.files]\n'
             'Q4_0 = {{ file = "{n}-Q4_0.gguf", size = 1 }}\n')
    with pytest.raises(CatalogError, match="already names"):
        parse_catalog(entry.format(n="a") + entry.format(n="b"))
