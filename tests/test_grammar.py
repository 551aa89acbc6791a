"""The GBNF checker that stands between requests and llama.cpp's parser (issue 16, crash 1).

Pure tables for the reasons; llama.cpp's own parser (in-process, through the tiny real model's
vocabulary) as the judge that every grammar the checker accepts really loads; and the CLI, where
each of these grammars used to end in a segfault (exit 139) or an abort (exit 134).
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
from conftest import run_cli

from edgellm.errors import GrammarError
from edgellm.text.grammar import check_grammar

GRAMMARS = Path(__file__).parent / "data" / "grammars"
EXAMPLES = sorted(GRAMMARS.glob("*.gbnf"))

# Each of these crashed or hung llama.cpp before edgellm checked grammars itself.
NESTED = "root ::= " + "(" * 2000 + '"a"' + ")" * 2000  # stack overflow in the recursive parser: exit 139
# `ws` can match nothing, so `term` starts with `expr` again; llama.cpp's left-recursion check misses
# it and expands the stack until std::bad_alloc aborts the process (found by the comparison below).
GROWS = 'root ::= expr "="\nexpr ::= term "+"\nterm ::= "x" | ws expr ")"\nws ::= [ ]*\n'
# llama.cpp's left-recursion check revisits shared rules: 2^40 calls, hours of a hung worker.
BRANCHY = "\n".join(f"r{i} ::= r{i + 1} | r{i + 1}" for i in range(40)).replace("r0 ::=", "root ::=") + '\nr40 ::= "a"'


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_llama_cpp_example_grammars_are_accepted(path: Path) -> None:
    check_grammar(path.read_text(encoding="utf-8"))


@pytest.mark.parametrize(
    ("grammar", "words"),
    [
        ("root ::= ( ", "expecting ')' at line 1"),
        ("", "empty"),
        ("root ::= x", "rule 'x' is used but never defined"),
        ('answer ::= "a"', "no 'root' rule"),
        ('root ::= "a"{5,2}', "maximum is below its minimum"),  # llama.cpp: an unsigned underflow, then endless rules
        ('root ::= "a"{3000}', "more than llama.cpp allows"),
        ("root ::= *", "expecting preceding item"),
        ('root ::= "\\q"', "unknown escape"),
        ('root ::= "\\x4"', "expecting 2 hex chars"),
        ('root ::= root "a"', "left recursion"),
        ('root ::= "a"\x00"b"', "NUL"),
        ("root ::= \"\ud800\"", "not valid Unicode"),
        ('root ::= "a" :', "expecting newline or end"),
        (NESTED, "nested deeper than"),
        (GROWS, "until memory runs out"),
        (BRANCHY, "too much for llama.cpp"),
        ('root ::= "' + "a" * 300_000 + '"', "larger than"),
    ],
)
def test_grammars_llama_cpp_would_refuse_or_crash_on_get_a_reason(grammar: str, words: str) -> None:
    with pytest.raises(GrammarError) as raised:
        check_grammar(grammar)
    assert words in raised.value.message
    assert "\n" not in raised.value.message


def test_optional_items_repeated_are_not_mistaken_for_left_recursion() -> None:
    # `("a"?)+` can match nothing at each step, but the recursion is in tail position: llama.cpp's
    # stacks repeat rather than grow, and the grammar works.
    check_grammar('root ::= ("a"?)+ "b"\n')


def _mutations(count: int) -> list[str]:
    rng = random.Random(20261201)
    seeds = [path.read_text(encoding="utf-8") for path in EXAMPLES]
    pieces = list('()[]{}|*+?."\\-^:=#<>!,0123 \n\tabroot') + ["::=", "\\x", '"a"', "root ::= ", "{2,", "}"]
    out = []
    for _ in range(count):
        text = rng.choice(seeds)
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(text) + 1)
            roll = rng.random()
            if roll < 0.4:
                text = text[:at] + rng.choice(pieces) + text[at:]
            elif roll < 0.8:
                text = text[:at] + text[at + rng.randint(1, 3):]
            else:
                text = text[:at]
        out.append(text)
    return out


def test_every_grammar_the_checker_accepts_loads_in_llama_cpp(tiny_f32: Path) -> None:
    """Mutated example grammars: whatever passes the checker, llama.cpp's parser must accept too."""
    from edgellm.device.hardware import detect
    from edgellm.device.profiles import select_profile
    from edgellm.plan.planner import make_plan
    from edgellm.runtime.engine import Engine
    from edgellm.runtime.native import load_llama_cpp
    from edgellm.store.gguf import read_gguf

    model = read_gguf(tiny_f32)
    device = detect("/")
    profile, _ = select_profile(device, None)
    engine = Engine(model, make_plan(model, device, profile, ctx=512))
    llama_cpp = load_llama_cpp()
    accepted = refused_by_llama = 0
    saved_stderr = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        for text in _mutations(1500):
            try:
                check_grammar(text)
            except GrammarError:
                continue
            accepted += 1
            os.dup2(devnull, 2)  # llama.cpp prints the whole grammar when it refuses one
            try:
                sampler = llama_cpp.llama_sampler_init_grammar(engine._vocab, text.encode(), b"root")
            finally:
                os.dup2(saved_stderr, 2)
            if not sampler:
                refused_by_llama += 1
                print("accepted by edgellm, refused by llama.cpp:", json.dumps(text))
            else:
                llama_cpp.llama_sampler_free(sampler)
    finally:
        os.close(devnull)
        os.close(saved_stderr)
        engine.close()
    assert accepted > 100  # the mutations must exercise the accepting side too
    assert refused_by_llama == 0


@pytest.mark.parametrize(
    ("option", "content", "words"),
    [
        ("--grammar", "root ::= ( ", "invalid grammar: expecting ')'"),
        ("--grammar", NESTED, "nested deeper"),
        ("--grammar", GROWS, "left recursion"),
        ("--schema", '{"enum": []}', "an empty 'enum' matches no value"),
        ("--schema", '{"anyOf": []}', "an empty 'anyOf' matches no value"),
        ("--schema", '{"type": "object", "properties": {"a": ', "not valid JSON"),
        ("--schema", '{"$ref": "https://example.com/s.json"}', "only local"),
        ("--schema", '{"type": "string", "minLength": 1000000}', "'minLength' 1000000 is more than the grammar allows (1000)"),
        # issue 30: maxLength 10^9 grew the process to 22 GB before any size check (an OOM kill)
        ("--schema", '{"type": "string", "maxLength": 1000000000}', "'maxLength' 1000000000 is more than the grammar allows"),
    ],
)
def test_run_refuses_bad_grammars_with_one_line(tiny_q4km: Path, tmp_path: Path, option: str, content: str, words: str) -> None:
    path = tmp_path / "constraint"
    path.write_text(content)
    result = run_cli("run", "-m", str(tiny_q4km), "hi", option, str(path), timeout=120)
    err = result.stderr.decode()
    assert result.returncode == 1, err  # was 139 (segfault) or 134 (abort) for the first five
    assert words in err
    assert err.count("error:") == 1 and "Traceback" not in err
    assert "root ::=" not in err  # llama.cpp's dump of the grammar never reaches the user


def test_run_refuses_grammar_and_schema_together(tiny_q4km: Path, tmp_path: Path) -> None:
    (tmp_path / "g.gbnf").write_text('root ::= "a"')
    (tmp_path / "s.json").write_text('{"type": "boolean"}')
    result = run_cli("run", "-m", str(tiny_q4km), "hi", "--grammar", str(tmp_path / "g.gbnf"), "--schema", str(tmp_path / "s.json"))
    assert result.returncode == 2
    assert "--grammar or --schema, not both" in result.stderr.decode()


@pytest.mark.parametrize("chunks, expected", [
    ([b"plain ascii"], "plain ascii"),
    (["Tromsø 東京".encode()], "Tromsø 東京"),
    ([b"\xe6\x9d", b"\xb1x"], "東x"),  # a character split across tokens
    ([b"\xc0\xa2"], '"'),  # overlong: the grammar reads a quote, so the text must too
    ([b"\xe4ab"], chr((0x4 << 12) | (ord("a") & 0x3F) << 6 | (ord("b") & 0x3F))),  # continuation not checked inside a token
    ([b"\xed\xa0\x80"], "\ufffd"),  # a surrogate cannot be text: one replacement for one code point
    ([b"\xe4", b"a"], "\ufffda"),  # across tokens the grammar does check: refused there, replaced here
    ([b"\x80z"], "\ufffdz"),
])
def test_grammar_text_is_decoded_as_llama_cpps_grammar_decodes_it(chunks: list[bytes], expected: str) -> None:
    from edgellm.text.grammar import GrammarTextDecoder

    decoder = GrammarTextDecoder()
    text = "".join(decoder.decode(chunk) for chunk in chunks) + decoder.decode(b"", final=True)
    assert text == expected
