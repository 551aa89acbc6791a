"""Reasoning under control: the thinking budget, --no-think, the live status line, reasoning
token counts (stats, --json, serve's usage) and a context sized to long piped input. Real tiny
GGUF models with the real R1-Distill templates (the 1.5B revision that opens <think>, one that
does not, and llama.cpp's R1 template with its enable_thinking switch)."""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from pathlib import Path

import pexpect
import pytest
from conftest import cli_env, run_cli
from fake_engine import FakeEngine

from edgellm.store import synthetic

TEMPLATES = Path(__file__).parent / "data" / "templates"
YES_NO = 'root ::= "The answer is " ("yes" | "no") "."'


@pytest.fixture(scope="module")
def llama_cpp_r1(models_dir: Path) -> Path:
    """llama.cpp's copy of the R1-Distill template (enable_thinking decides whether <think> opens)."""
    template = (TEMPLATES / "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja").read_text()
    return synthetic.write_tiny_model(models_dir / "tiny-r1-llamacpp.gguf", chat_template=template)


@pytest.fixture(scope="module")
def long_trained(models_dir: Path) -> Path:
    """Trained for 32k tokens, as the distills are for 128k: more than any profile's default context."""
    shape = dataclasses.replace(synthetic.TINY, context_length=32768)
    return synthetic.write_tiny_model(models_dir / "tiny-32k-F32.gguf", shape=shape)


def run_json(*args: str, input: bytes | None = None) -> dict:  # noqa: A002  (subprocess.run's name)
    done = run_cli("run", *args, "--json", input=input)
    assert done.returncode == 0, done.stderr.decode()
    return json.loads(done.stdout)


@pytest.mark.parametrize("seed", [1, 2, 5])
def test_the_budget_ends_reasoning_at_exactly_n_tokens_and_an_answer_follows(tiny_f32: Path, seed: int) -> None:
    report = run_json("-m", str(tiny_f32), "--think-budget", "16", "-n", "48", "--seed", str(seed), "Hi")
    stats = report["stats"]
    assert stats["reasoning_tokens"] == 16
    assert report["reasoning"].endswith("I have thought about this long enough; time to give the answer.")
    assert report["answer"].strip()
    assert stats["generated_tokens"] <= 48


def test_the_budget_works_with_llama_cpps_template_and_a_custom_message(llama_cpp_r1: Path) -> None:
    report = run_json("-m", str(llama_cpp_r1), "--think-budget", "8", "--think-message", "\\nEnough.", "-n", "24",
                      "--seed", "4", "Hi")
    assert report["stats"]["reasoning_tokens"] == 8
    assert report["reasoning"].endswith("\nEnough.")


def test_with_a_budget_the_grammar_holds_the_answer_after_the_reasoning(tiny_f32: Path, tmp_path: Path) -> None:
    grammar = tmp_path / "yes_no.gbnf"
    grammar.write_text(YES_NO)
    for seed in (1, 2):
        report = run_json("-m", str(tiny_f32), "--think-budget", "8", "--grammar", str(grammar), "--seed", str(seed), "Hi")
        assert report["stats"]["reasoning_tokens"] == 8
        assert re.fullmatch(r"The answer is (yes|no)\.", report["answer"]), report
    # A JSON Schema describes the answer alone: with no budget the reply skips its reasoning.
    schema = tmp_path / "answer.schema.json"
    schema.write_text(json.dumps({"type": "object", "properties": {"answer": {"enum": ["yes", "no"]}}, "required": ["answer"]}))
    without = run_json("-m", str(tiny_f32), "--schema", str(schema), "Hi")
    assert (without["reasoning"], without["stats"]["reasoning_tokens"]) == ("", 0)
    assert json.loads(without["answer"])["answer"] in ("yes", "no")
    # Seeded: unseeded, random weights close the reasoning themselves now and then (seed 3 after 4 tokens).
    budgeted = run_json("-m", str(tiny_f32), "--schema", str(schema), "--think-budget", "5", "--seed", "1", "Hi")
    assert budgeted["stats"]["reasoning_tokens"] == 5 and json.loads(budgeted["answer"])["answer"] in ("yes", "no")


@pytest.mark.parametrize("fixture", ["tiny_f32", "tiny_no_prefill", "llama_cpp_r1"])
def test_no_think_answers_at_once_with_every_template_form(fixture: str, request: pytest.FixtureRequest) -> None:
    from edgellm.device.hardware import detect
    from edgellm.runtime.engine import Engine
    from edgellm.store.gguf import read_gguf

    model_path: Path = request.getfixturevalue(fixture)
    report = run_json("-m", str(model_path), "--no-think", "-n", "12", "--seed", "4", "Hi")
    assert (report["reasoning"], report["stats"]["reasoning_tokens"]) == ("", 0)
    assert report["stats"]["generated_tokens"] > 0
    del detect
    engine = Engine.tokenizer_only(read_gguf(model_path))
    try:
        text = engine.format_messages([{"role": "user", "content": "Hi"}], template_kwargs={"enable_thinking": False})
        prompt = engine.prompt_from_messages([{"role": "user", "content": "Hi"}], check=False, no_think=True)
        assert prompt.closes_think and not prompt.opens_think
        assert engine.tokenize(text)[: len(prompt.tokens) - 8] == prompt.tokens[: len(prompt.tokens) - 8]
    finally:
        engine.close()


def test_no_think_and_a_budget_together_are_refused(tiny_f32: Path) -> None:
    done = run_cli("run", "-m", str(tiny_f32), "--no-think", "--think-budget", "5", "Hi")
    assert done.returncode == 2
    assert done.stderr.decode().startswith("error: --no-think and --think-budget cannot be combined")


def test_stats_line_counts_reasoning_tokens(tiny_f32: Path) -> None:
    done = run_cli("run", "-m", str(tiny_f32), "--think-budget", "6", "-n", "20", "--seed", "1", "--stats", "Hi")
    assert done.returncode == 0
    assert re.search(r"\d+ tokens \(6 reasoning\)", done.stderr.decode()), done.stderr.decode()


def test_the_live_thinking_line_appears_on_a_terminal_and_goes_away(tiny_f32: Path, tmp_path: Path) -> None:
    child = pexpect.spawn(sys.executable, ["-m", "edgellm", "run", "-m", str(tiny_f32), "--think", "hide",
                                           "--think-budget", "24", "-n", "40", "--seed", "1", "Hi"],
                          cwd=str(tmp_path), env=cli_env(TERM="xterm-256color"), encoding="utf-8",
                          codec_errors="replace", timeout=120)
    child.expect(r"thinking… \d+ tokens · \d+ s")
    child.expect_exact("\r\x1b[K")  # erased when the answer starts
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_nothing_is_drawn_when_stderr_is_not_a_terminal(tiny_f32: Path) -> None:
    done = run_cli("run", "-m", str(tiny_f32), "--think", "hide", "--think-budget", "8", "-n", "16", "Hi")
    assert done.returncode == 0
    assert "thinking…" not in done.stderr.decode() and "\x1b[" not in done.stderr.decode()


# -- serve --

def test_serve_budgets_from_the_request_and_reports_reasoning_tokens() -> None:
    from test_serve_inprocess import start

    engine = FakeEngine("I wonder about this for a long while. " * 8 + "</think>It is 42.", thinks=True,
                        template_opens_think=True)
    with start(engine, think_budget=None, effort_budgets={"low": 5, "medium": 10, "high": 20}) as running:
        ask = {"model": "fake", "messages": [{"role": "user", "content": "?"}], "max_tokens": 200}
        free = running.client.chat.completions.create(**ask)  # type: ignore[call-overload]
        assert free.usage.completion_tokens_details.reasoning_tokens > 200 - 100  # the model's own length
        low = running.client.chat.completions.create(**ask, reasoning_effort="low")  # type: ignore[call-overload]
        assert low.usage.completion_tokens_details.reasoning_tokens == 5
        exact = running.client.chat.completions.create(**ask, extra_body={"thinking_budget_tokens": 7})  # type: ignore[call-overload]
        assert exact.usage.completion_tokens_details.reasoning_tokens == 7
        assert exact.choices[0].message.reasoning_content.endswith("time to give the answer.")  # type: ignore[attr-defined]
        none = running.client.chat.completions.create(**ask, reasoning_effort="none")  # type: ignore[call-overload]
        assert none.usage.completion_tokens_details.reasoning_tokens == 0
        import openai

        with pytest.raises(openai.BadRequestError, match="reasoning_effort must be"):
            running.client.chat.completions.create(**ask, reasoning_effort="extreme")  # type: ignore[call-overload]


def test_serve_default_budget_comes_from_the_server() -> None:
    from test_serve_inprocess import start

    engine = FakeEngine("thinking " * 50 + "</think>Done.", thinks=True, template_opens_think=True)
    with start(engine, think_budget=9) as running:
        answer = running.client.chat.completions.create(model="fake", messages=[{"role": "user", "content": "?"}])
        assert answer.usage is not None
        assert answer.usage.completion_tokens_details.reasoning_tokens == 9  # type: ignore[union-attr]


def test_serve_sends_no_answer_text_from_the_token_that_closes_the_reasoning() -> None:
    """With a budget the JSON grammar waits for </think>. A token holding the tag and the
    answer's first word was sampled without the grammar: it is taken back, and its word is not sent
    ahead of the grammar's JSON (the reply was 'The{"city": "Oslo"}'). The tiny GGUF models have
    </think> as a token of its own, so the scripted engine writes the piece, through the real Scheduler."""
    from test_serve_inprocess import start

    def model(prompt: str) -> list[str]:
        # After the take-back the engine wrote the tag and blank line itself; the grammar's answer follows.
        return ['{"city": ', '"Oslo"}'] if prompt.endswith("</think>\n\n") else ["Oslo", " it is.", "</think>\n\nThe", " city"]

    with start(FakeEngine(model, thinks=True, template_opens_think=True)) as running:
        ask = {"model": "fake", "messages": [{"role": "user", "content": "Where?"}], "response_format": {"type": "json_object"},
               "extra_body": {"thinking_budget_tokens": 50}}
        reply = running.client.chat.completions.create(**ask)  # type: ignore[call-overload]
        assert reply.choices[0].message.content == '{"city": "Oslo"}'
        assert reply.choices[0].message.reasoning_content == "Oslo it is."  # type: ignore[attr-defined]
        stream = running.client.chat.completions.create(**ask, stream=True)  # type: ignore[call-overload]
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == '{"city": "Oslo"}'



def test_an_answer_grammar_holds_a_reply_that_skips_its_reasoning() -> None:
    """With a budget and a JSON grammar, a model whose template does not open <think> may answer at
    once: its first token, sampled without the grammar, is taken back, and the grammar draws the
    first token anew from the same point (the reply was empty: the scheduler ended it with nothing
    to write). Scripted engine, through the real Scheduler."""
    from test_serve_inprocess import start

    replies = iter([["Paris", " it", " is"], ['{"city": ', '"Paris"}']])  # without the grammar, then under it

    with start(FakeEngine(lambda prompt: next(replies), thinks=True, template_opens_think=False)) as running:
        ask = {"model": "fake", "messages": [{"role": "user", "content": "Where?"}], "response_format": {"type": "json_object"},
               "extra_body": {"thinking_budget_tokens": 50}}
        reply = running.client.chat.completions.create(**ask)  # type: ignore[call-overload]
        assert reply.choices[0].message.content == '{"city": "Paris"}'
        assert reply.choices[0].finish_reason == "stop"

# -- long input --

def long_text(tokens: int) -> bytes:
    """`tokens` tokens of the tiny tokenizer: " the" is one of its tokens."""
    return ("the" + " the" * (tokens - 1)).encode()


def test_a_long_pipe_gets_a_context_sized_to_it(long_trained: Path) -> None:
    done = run_cli("run", "-m", str(long_trained), "--no-think", "-n", "4", "Summarise:", input=long_text(11000))
    err = done.stderr.decode()
    assert done.returncode == 0, err
    match = re.search(r"context (\d+) -> (\d+) tokens, to hold the (\d+)-token prompt and its reply", err)
    assert match, err
    default, sized, prompt = map(int, match.groups())
    assert prompt > default and sized >= prompt + 4
    assert "n_ctx_train" not in err  # counting the prompt loads the vocabulary only, quietly


def test_a_long_pipe_beyond_memory_says_how_many_tokens_fit(long_trained: Path) -> None:
    from edgellm.device.hardware import detect
    from edgellm.device.profiles import select_profile
    from edgellm.plan.planner import make_plan
    from edgellm.store.gguf import read_gguf

    model = read_gguf(long_trained)
    device = detect("/")
    profile, _ = select_profile(device, None)
    # The smallest budget the profile's default context fits (with the planner's q8_0 fallback): 11k tokens do not.
    mib = 1 << 20
    budget_bytes = next(b for b in range(8 * mib, 1024 * mib, mib)
                        if make_plan(model, device, profile, mem_budget=b).fits
                        and make_plan(model, device, profile, mem_budget=b).n_ctx >= profile.default_ctx)
    assert make_plan(model, device, profile, ctx=11264, mem_budget=budget_bytes).n_ctx < 11100
    budget = f"{budget_bytes // 1024}KiB"
    done = run_cli("run", "-m", str(long_trained), "--no-think", "-n", "4", "--mem-budget", budget, "Summarise:",
                   input=long_text(11000))
    err = done.stderr.decode()
    assert done.returncode != 0
    match = re.match(r"error: the prompt is (\d+) tokens, but memory holds a context of at most (\d+) tokens", err)
    assert match, err
    assert int(match.group(2)) >= profile.default_ctx > 0 and int(match.group(1)) > int(match.group(2))
    assert "Traceback" not in err and "n_ctx_train" not in err  # no llama.cpp noise from counting the tokens


def test_a_chat_turn_too_long_for_the_context_gets_a_larger_one(long_trained: Path) -> None:
    """Each chat turn, like run, sizes the context to a message that does not fit even alone."""
    lines = b"Hi\n" + long_text(11000) + b"\nAnd now?\n"
    done = run_cli("chat", "-m", str(long_trained), "--no-think", "-n", "4", "--seed", "3", input=lines)
    err = done.stderr.decode()
    assert done.returncode == 0, err
    assert re.search(r"context 8192 -> \d+ tokens, to hold the \d+-token prompt and its reply", err), err
    # Every turn answered, the ones after the long one too: one stats line per reply. (Counting
    # stdout's lines fails at random: random weights write newlines and control characters.)
    assert len(re.findall(r"^\d+ tokens .*· stopped: ", err, re.M)) == 3, err


def test_chat_think_commands_change_the_reasoning(tiny_f32: Path) -> None:
    script = "/think budget 5\nHi\n/think off\nHi again\n/think on\n/think\n"
    done = run_cli("chat", "-m", str(tiny_f32), "-n", "12", "--seed", "1", input=script.encode())
    err = done.stderr.decode()
    assert done.returncode == 0, err
    assert "reasoning: at most 5 tokens" in err and "reasoning: off (the answer starts at once)" in err
    statuses = re.findall(r"^(\d+) tokens(?: \((\d+) reasoning\))? ·", err, re.M)
    assert [reasoning for _, reasoning in statuses] == ["5", ""]  # the second reply had no reasoning at all
    assert "reasoning is hidden, at most 5 tokens" in err  # on undoes off; the budget set before stays


def test_a_real_server_reports_reasoning_tokens_for_a_budget(tiny_8k: Path, tmp_path: Path) -> None:
    import openai
    from test_serve import ServerProcess

    server = ServerProcess(tiny_8k, "--think-budget", "7", home=tmp_path, ctx="2048")
    try:
        client = openai.OpenAI(base_url=server.base_url, api_key="none", max_retries=0, timeout=60)
        ask = {"model": tiny_8k.stem, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 30, "seed": 2}
        default = client.chat.completions.create(**ask)  # type: ignore[call-overload]
        assert default.usage.completion_tokens_details.reasoning_tokens == 7
        assert default.choices[0].message.reasoning_content.endswith("time to give the answer.")  # type: ignore[attr-defined]
        own = client.chat.completions.create(**ask, extra_body={"thinking_budget_tokens": 3})  # type: ignore[call-overload]
        assert own.usage.completion_tokens_details.reasoning_tokens == 3
        off = client.chat.completions.create(**ask, reasoning_effort="none")  # type: ignore[call-overload]
        assert off.usage.completion_tokens_details.reasoning_tokens == 0
        assert not (off.choices[0].message.model_extra or {}).get("reasoning_content")
    finally:
        assert server.stop() == 0


def test_plan_shows_the_worst_case_time_to_an_answer(tiny_f32: Path) -> None:
    from edgellm.device.hardware import detect
    from edgellm.device.profiles import load_profiles
    from edgellm.plan.planner import ANSWER_TOKENS, make_plan
    from edgellm.store.gguf import read_gguf

    model = read_gguf(tiny_f32)
    profiles = {p.name: p for p in load_profiles()}
    pi = make_plan(model, detect("/"), profiles["raspberry-pi-5"])
    assert pi.think_budget == 512
    assert pi.predicted_tg_tps and pi.worst_answer_s == round((512 + ANSWER_TOKENS) / pi.predicted_tg_tps, 1)
    laptop = make_plan(model, detect("/"), profiles["laptop-x86"])
    assert laptop.worst_answer_s is None and "no thinking budget" in laptop.reasons["worst_answer_s"]
    done = run_cli("plan", str(tiny_f32), "--profile", "raspberry-pi-5")
    assert re.search(r"answer in\s+≤ [\d.]+ s", done.stdout.decode()), done.stdout.decode()
