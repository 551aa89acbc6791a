"""`edgellm chat`: driven through a real pseudo-terminal (pexpect) and through pipes, with tiny real
GGUF models loaded by llama-cpp-python; plus unit tests of the history logic."""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest
from conftest import cli_env, run_cli

from edgellm.errors import UsageError
from edgellm.store import synthetic
from edgellm.ui import chat_session as chat
from edgellm.ui import stream

STATUS = re.compile(
    r"(\d+) tokens(?: \(\d+ reasoning\))?(?: · [\d.]+ tok/s · first token [\d.]+s)? · prompt (\d+) new \+ (\d+) cached · context (\d+)/(\d+)"
)
PROMPT = ">>>"  # prompt_toolkit draws the trailing space as a cursor move


@pytest.fixture(scope="module")
def long_context_model(models_dir: Path) -> Path:
    """The tiny model with room for a reply long enough to interrupt on any machine."""
    shape = dataclasses.replace(synthetic.TINY, context_length=16384)
    return synthetic.write_tiny_model(models_dir / "tiny-16k-F32.gguf", shape=shape)


def spawn_chat(*args: str, cwd: Path) -> pexpect.spawn:
    env = cli_env(PROMPT_TOOLKIT_NO_CPR="1", TERM="xterm-256color")
    # A generous timeout and a bounded search window: replies are kilobytes of noise, and
    # searching all of it after every read made these tests CPU-bound (and time out on a busy machine).
    child = pexpect.spawn(
        sys.executable, ["-m", "edgellm", "chat", *args], cwd=str(cwd), env=env,
        dimensions=(50, 250), encoding="utf-8", codec_errors="replace", timeout=180, searchwindowsize=8000,
    )
    child.expect_exact("Ctrl-D exits")
    child.expect_exact(PROMPT)
    return child


def send_turn(child: pexpect.spawn, text: str) -> re.Match[str]:
    child.sendline(text)
    child.expect(STATUS)
    match = child.match
    child.expect_exact(PROMPT)
    return match


def finish(child: pexpect.spawn) -> int:
    child.sendcontrol("d")
    child.expect(pexpect.EOF)
    child.close()
    return int(child.exitstatus if child.exitstatus is not None else -1)


def read_transcript(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


# --- through a real terminal ----------------------------------------------------------------------


def test_terminal_turns_reuse_cache_commands_save_and_exit(tiny_f32: Path, tmp_path: Path) -> None:
    child = spawn_chat("-m", str(tiny_f32), "--seed", "3", "-n", "24", "--system", "You are terse.", cwd=tmp_path)
    first = send_turn(child, "Hello there, how are you?")
    assert int(first.group(1)) > 0
    assert int(first.group(3)) == 0  # nothing cached before the first turn
    second = send_turn(child, "What is a token?")
    # The next turn evaluates only what follows the shared prefix (system prompt, first turn).
    assert int(second.group(3)) > 0
    assert int(second.group(4)) <= int(second.group(5))

    child.sendline("/set temp 0")
    child.expect_exact("temp 0, top_p 0.95, max_tokens 24, seed 3")
    child.sendline("/nope")
    child.expect_exact("unknown command /nope; the commands are: /help /system /clear /save /load /stats /think /set /exit")
    child.sendline("/help")
    child.expect_exact("/save FILE")
    child.sendline("/save chat.json")
    child.expect_exact("saved 4 messages to chat.json")
    child.expect_exact(PROMPT)
    assert finish(child) == 0

    saved = read_transcript(tmp_path / "chat.json")
    assert saved["format"] == "edgellm-chat"
    assert saved["system"] == "You are terse."
    assert [m["role"] for m in saved["messages"]] == ["user", "assistant", "user", "assistant"]
    assert [m["content"] for m in saved["messages"][::2]] == ["Hello there, how are you?", "What is a token?"]
    for message in saved["messages"][1::2]:
        assert "<think>" not in message["content"] and "</think>" not in message["content"]


def test_ctrl_c_mid_reply_keeps_partial_reply_and_session_goes_on(long_context_model: Path, tmp_path: Path) -> None:
    child = spawn_chat("-m", str(long_context_model), "--ctx", "16384", "--seed", "11", cwd=tmp_path)
    child.sendline("Tell me a very long story")
    child.expect_exact("\x1b[2m")  # the first reasoning text, dimmed: the reply is streaming
    child.sendintr()
    child.expect_exact("interrupted; the partial reply stays in the history")
    interrupted = child.expect(STATUS) == 0 and child.match
    assert interrupted and int(interrupted.group(1)) < 16384
    child.expect_exact(PROMPT)

    child.sendline("/save partial.json")
    child.expect_exact("saved 2 messages")
    child.expect_exact(PROMPT)
    saved = read_transcript(tmp_path / "partial.json")
    assert saved["messages"][1]["role"] == "assistant"
    assert saved["messages"][1].get("reasoning", "") + saved["messages"][1]["content"]

    child.sendline("/set max_tokens 8")
    child.expect_exact("max_tokens 8")
    after = send_turn(child, "And then?")
    assert int(after.group(1)) <= 8

    child.sendintr()  # at an empty prompt: asks once
    child.expect_exact("press Ctrl-C again to exit")
    child.expect_exact(PROMPT)
    child.sendintr()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_load_at_start_slash_load_clear_and_multiline(tiny_f32: Path, tmp_path: Path) -> None:
    history = {"format": "edgellm-chat", "version": 1, "system": "Be kind.", "messages": [
        {"role": "user", "content": "The first question about the weather and the sea"},
        {"role": "assistant", "content": "The first answer, about the sea and the weather."},
        {"role": "user", "content": "A second question"},
        {"role": "assistant", "content": "A second answer."},
    ]}
    (tmp_path / "start.json").write_text(json.dumps(history), encoding="utf-8")
    (tmp_path / "other.json").write_text(json.dumps([{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]), encoding="utf-8")

    child = spawn_chat("-m", str(tiny_f32), "--load", "start.json", "--seed", "5", "-n", "8", cwd=tmp_path)
    with_history = send_turn(child, "Hi")
    child.sendline("/clear")
    child.expect_exact("conversation cleared (the system prompt stays)")
    without_history = send_turn(child, "Hi")
    # The loaded turns reached the model: the same message made a longer prompt with them.
    prompt_with = int(with_history.group(2)) + int(with_history.group(3))
    prompt_without = int(without_history.group(2)) + int(without_history.group(3))
    assert prompt_with > prompt_without

    child.sendline("/load other.json")
    child.expect_exact("loaded 2 messages (1 turns) from other.json")
    child.sendline("/load missing.json")
    child.expect_exact("missing.json: cannot read")
    child.sendline('"""')
    child.expect_exact("...")
    child.sendline("line one")
    child.sendline('line two"""')
    child.expect(STATUS)
    child.expect_exact(PROMPT)
    child.sendline("/save out.json")
    child.expect_exact("saved 4 messages")
    child.expect_exact(PROMPT)
    assert finish(child) == 0

    saved = read_transcript(tmp_path / "out.json")
    assert saved["system"] is None  # other.json had none, and /load replaces the conversation
    assert [m["content"] for m in saved["messages"][::2]] == ["u", "line one\nline two"]


# --- through pipes (plain line mode) --------------------------------------------------------------


def _expected_stdout(messages: list[dict]) -> str:
    answers = [m["content"] for m in messages if m["role"] == "assistant"]
    return "".join(a if a.endswith("\n") else a + "\n" for a in answers)


def test_piped_stdin_one_turn_per_line_plain_text(tiny_no_prefill: Path, tmp_path: Path) -> None:
    script = f"Hello there\n/set temp 0\n\nWhat is a token?\n/save {tmp_path / 'piped.json'}\n"
    result = run_cli("chat", "-m", str(tiny_no_prefill), "--seed", "2", "-n", "16", input=script.encode())
    assert result.returncode == 0, result.stderr.decode()
    stderr = result.stderr.decode()
    assert "Traceback" not in stderr
    assert len(STATUS.findall(stderr)) == 2
    assert "\x1b[" not in result.stdout.decode()  # plain text, no terminal codes
    saved = read_transcript(tmp_path / "piped.json")
    assert [m["content"] for m in saved["messages"] if m["role"] == "user"] == ["Hello there", "What is a token?"]
    # stdout holds exactly the answers, one block per turn; reasoning is hidden when piped.
    assert result.stdout.decode() == _expected_stdout(saved["messages"])


def test_piped_reasoning_goes_to_stderr_never_stdout(tiny_f32: Path, tmp_path: Path) -> None:
    script = f"Hello\n/save {tmp_path / 't.json'}\n"
    result = run_cli("chat", "-m", str(tiny_f32), "--seed", "4", "-n", "12", "--think", "stderr", input=script.encode())
    assert result.returncode == 0, result.stderr.decode()
    saved = read_transcript(tmp_path / "t.json")
    reasoning = saved["messages"][1].get("reasoning", "")
    assert reasoning  # this template opens <think>, so the tiny model's text starts as reasoning
    assert reasoning.strip()[:8] in result.stderr.decode()
    assert result.stdout.decode() == _expected_stdout(saved["messages"])


def test_think_show_puts_reasoning_inline_on_stdout_as_run_does(tiny_f32: Path, tmp_path: Path) -> None:
    # One --think vocabulary (issue 14): show means inline in <think> tags on stdout, for chat as for run.
    script = f"Hello\n/save {tmp_path / 't.json'}\n"
    result = run_cli("chat", "-m", str(tiny_f32), "--seed", "4", "-n", "12", "--think", "show", input=script.encode())
    assert result.returncode == 0, result.stderr.decode()
    saved = read_transcript(tmp_path / "t.json")
    reasoning, answer = saved["messages"][1].get("reasoning", ""), saved["messages"][1]["content"]
    assert reasoning  # this template opens <think>, so the tiny model's text starts as reasoning
    stdout = result.stdout.decode()
    assert stdout.startswith("<think>\n" + reasoning)
    closed = stdout.index("</think>\n", len("<think>\n" + reasoning))
    assert stdout[closed + len("</think>\n"):].strip() == answer.strip()
    assert reasoning.strip()[:8] not in result.stderr.decode()


def test_context_overflow_drops_oldest_turns_keeps_system(tiny_f32: Path, tmp_path: Path) -> None:
    long_line = "Tell me about the weather and the sea and the tokens of the model. " * 3
    script = "".join(f"{long_line}{i}\n" for i in range(6)) + f"/save {tmp_path / 'o.json'}\n"
    result = run_cli("chat", "-m", str(tiny_f32), "--ctx", "256", "-n", "16", "--seed", "1",
                     "--system", "Stay on topic.", input=script.encode())
    assert result.returncode == 0, result.stderr.decode()
    stderr = result.stderr.decode()
    assert "context full: dropped the oldest" in stderr
    saved = read_transcript(tmp_path / "o.json")
    assert saved["system"] == "Stay on topic."
    users = [m["content"] for m in saved["messages"] if m["role"] == "user"]
    assert 0 < len(users) < 6 and users[-1].endswith("5")
    for context_used, n_ctx in (m.groups()[3:] for m in STATUS.finditer(stderr)):
        assert int(context_used) <= int(n_ctx)


def test_message_longer_than_context_is_refused_and_session_continues(tiny_f32: Path) -> None:
    huge = "weather and the sea " * 200
    result = run_cli("chat", "-m", str(tiny_f32), "--ctx", "128", "-n", "8", input=f"{huge}\nHi\n".encode())
    stderr = result.stderr.decode()
    assert "this message is too long" in stderr and "Traceback" not in stderr
    assert len(STATUS.findall(stderr)) == 1  # the next line was still answered
    # ... and then the script is told a line failed (issue 16: 0.1 exited 0).
    assert result.returncode == 1 and "1 piped line failed" in stderr


def test_bad_arguments_are_one_line_errors(tiny_f32: Path, tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text('{"messages": [{"role": "robot", "content": "x"}]}', encoding="utf-8")
    for args, expected in (
        (("--load", str(tmp_path / "bad.json")), "message 1 needs a role of user or assistant"),
        (("--load", str(tmp_path / "absent.json")), "cannot read"),
        (("--think", "loud"), "--think must be one of hide, show, stderr"),
    ):
        result = run_cli("chat", "-m", str(tiny_f32), *args, input=b"")
        stderr = result.stderr.decode()
        assert result.returncode != 0
        assert expected in stderr and "Traceback" not in stderr
        assert stderr.startswith("error: ")


def test_without_model_names_the_profile_model_it_wants() -> None:
    result = run_cli("chat", input=b"Hi\n")
    stderr = result.stderr.decode()
    assert result.returncode != 0
    assert "deepseek-r1" in stderr and "Traceback" not in stderr
    assert "-m" in stderr  # says how to pass a file instead


# --- logic ---------------------------------------------------------------------------------------


def _words(messages: list[dict[str, str]]) -> int:
    return sum(len(m["content"].split()) for m in messages)


def test_fit_to_context_drops_whole_oldest_turns_and_keeps_system() -> None:
    conversation = chat.Conversation(system="sys prompt", messages=[
        {"role": "user", "content": "a a a"}, {"role": "assistant", "content": "b b b"},
        {"role": "user", "content": "c c c"}, {"role": "assistant", "content": "d d d"},
    ])
    dropped, tokens = chat.fit_to_context(conversation, "e e", _words, limit=10)
    assert dropped == 1 and tokens == 10
    assert [m["content"] for m in conversation.messages] == ["c c c", "d d d"]
    assert conversation.for_model()[0] == {"role": "system", "content": "sys prompt"}
    assert chat.fit_to_context(conversation, "e e", _words, limit=10) == (0, 10)


def test_fit_to_context_refuses_without_touching_history() -> None:
    conversation = chat.Conversation(messages=[{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])
    with pytest.raises(UsageError, match="too long"):
        chat.fit_to_context(conversation, "x " * 20, _words, limit=5)
    assert len(conversation.messages) == 2


def test_transcript_accepts_openai_style_list_with_leading_system() -> None:
    loaded = chat.conversation_from_json(
        [{"role": "system", "content": "S"}, {"role": "user", "content": "U"},
         {"role": "assistant", "content": "A", "reasoning": "R"}], "x")
    assert loaded.system == "S"
    assert loaded.for_model() == [{"role": "system", "content": "S"}, {"role": "user", "content": "U"},
                                  {"role": "assistant", "content": "A"}]  # reasoning never goes back to the model
    with pytest.raises(chat.TranscriptError):
        chat.conversation_from_json({"format": "other", "messages": []}, "x")


class _Lines:
    def __init__(self, lines: list[str]) -> None:
        self.lines: Iterator[str] = iter(lines)

    def read(self, continuation: bool = False) -> str:
        try:
            return next(self.lines)
        except StopIteration:
            raise EOFError from None


@pytest.mark.parametrize(("lines", "message"), [
    (["plain"], "plain"),
    (['"""', "a", "b", '"""'], "a\nb"),
    (['"""first', 'second"""'], "first\nsecond"),
    (['"""one line"""'], "one line"),
    (['"""', "unterminated"], "unterminated"),
])
def test_read_message_blocks(lines: list[str], message: str) -> None:
    assert chat.read_message(_Lines(lines)) == message


def test_cpu_temperature_reads_thermal_zones_of_a_capture(tmp_path: Path) -> None:
    zone = tmp_path / "sys/class/thermal/thermal_zone0"
    zone.mkdir(parents=True)
    (zone / "temp").write_text("61250\n")
    (zone / "type").write_text("cpu-thermal\n")
    assert chat.cpu_temperature(str(tmp_path)) == pytest.approx(61.2, abs=0.1)
    assert chat.cpu_temperature(str(tmp_path / "nothing")) is None


def test_help_has_an_example() -> None:
    result = run_cli("chat", "--help")
    assert result.returncode == 0 and b"Example: edgellm chat" in result.stdout


def test_piped_ctrl_c_mid_reply_stops_the_script_cleanly(long_context_model: Path) -> None:
    import signal
    import subprocess

    child = subprocess.Popen(
        [sys.executable, "-m", "edgellm", "chat", "-m", str(long_context_model), "--ctx", "16384",
         "--seed", "11", "--think", "stderr"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env(),
    )
    assert child.stdin is not None and child.stderr is not None
    child.stdin.write(b"Tell me a very long story\n")
    child.stdin.flush()
    started = child.stderr.read(1)  # the reasoning streams to stderr: the reply is under way
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=60)
    assert started and child.returncode == 130
    assert b"interrupted" in err and b"Traceback" not in err


def test_ctrl_c_between_tokens_is_handed_to_the_engine(tiny_f32: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C that lands while a token is being written still stops the real engine with its stats."""
    from edgellm.loader import PlanOptions, prepare
    from edgellm.runtime.engine import Engine
    from edgellm.runtime.types import SamplingParams

    prepared = prepare(str(tiny_f32), PlanOptions(ctx=512))
    engine = Engine(prepared.model, prepared.plan)
    writes: list[str] = []

    def write_then_interrupt(text: str) -> None:
        writes.append(text)
        if len(writes) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(stream, "write_reasoning", write_then_interrupt)
    options = chat.ChatOptions(think="stderr", interactive=True)
    session = chat.ChatSession(engine, chat.Conversation(), SamplingParams(seed=1), options, sys.stdout)
    try:
        session.turn("Tell me a story")
    finally:
        engine.close()
    assert len(writes) == 3
    assert session.last_stats is not None and session.last_stats.finish_reason == "interrupted"
    assert 3 <= session.last_stats.generated_tokens < 100
    assert session.conversation.messages[-1]["reasoning"] == "".join(writes)


def test_arrow_up_recalls_input_across_sessions_and_hidden_thinking_shows_placeholder(tiny_f32: Path, tmp_path: Path) -> None:
    child = spawn_chat("-m", str(tiny_f32), "--seed", "6", "-n", "8", "--think", "hide", cwd=tmp_path)
    child.sendline("Hi from the first session")
    # Hidden reasoning shows a live line of how far it is, erased before the status line.
    child.expect(r"thinking… \d+ tokens · \d+ s")
    child.expect_exact("\r\x1b[K")
    child.expect(STATUS)
    child.expect_exact(PROMPT)
    assert finish(child) == 0

    child = spawn_chat("-m", str(tiny_f32), "--seed", "6", "-n", "8", cwd=tmp_path)
    child.send("\x1b[A")  # arrow up: the previous session's line, from the history file
    child.send("\r")
    child.expect(STATUS)
    child.expect_exact(PROMPT)
    child.sendline("/save h.json")
    child.expect_exact("saved 2 messages")
    child.expect_exact(PROMPT)
    assert finish(child) == 0
    saved = read_transcript(tmp_path / "h.json")
    assert saved["messages"][0]["content"] == "Hi from the first session"


def test_status_line_fields_and_prompt_only_interruption() -> None:
    from edgellm import ui
    from edgellm.runtime.types import GenerationStats

    stats = GenerationStats(prompt_tokens=100, prompt_tokens_evaluated=12, generated_tokens=30, ttft_s=0.25,
                            gen_tps=6.5, peak_rss_bytes=1 << 30, n_ctx=4096, context_used=130, finish_reason="length")
    line = ui.chat_status_line(stats, 61.4)
    assert line == ("30 tokens · 6.5 tok/s · first token 0.25s · prompt 12 new + 88 cached · context 130/4096 · "
                    "RSS 1.00 GiB · CPU 61 C · stopped: length")
    stopped = GenerationStats(prompt_tokens=100, prompt_tokens_evaluated=100, n_ctx=4096, finish_reason="interrupted")
    assert "tok/s" not in ui.chat_status_line(stopped) and "first token" not in ui.chat_status_line(stopped)


# --- issue 16 -------------------------------------------------------------------------------------


def test_piped_non_utf8_line_is_a_warning_and_every_line_is_answered(tiny_f32: Path) -> None:
    # 0.1: exit 1 with "unexpected UnicodeEncodeError", and the next line was never processed.
    result = run_cli("chat", "-m", str(tiny_f32), "-n", "4", input=b"hi \xff\xfe there\nnext\n")
    stderr = result.stderr.decode()
    assert result.returncode == 0, stderr
    assert "stdin line 1 is not valid UTF-8" in stderr and "unexpected" not in stderr
    assert len(STATUS.findall(stderr)) == 2


@pytest.mark.parametrize("command", ["/set temp nan", "/set top_p nan", "/set temp inf"])
def test_non_finite_sampling_values_are_refused(tiny_f32: Path, command: str) -> None:
    result = run_cli("chat", "-m", str(tiny_f32), "-n", "2", input=f"{command}\n/set\nhi\n".encode())
    stderr = result.stderr.decode()
    assert "is not a finite number" in stderr
    assert "temp 0.6, top_p 0.95" in stderr  # unchanged
    assert len(STATUS.findall(stderr)) == 1
    assert result.returncode == 1  # a piped command failed: the script hears of it


def test_ctrl_d_mid_reply_stops_it_and_leaves(long_context_model: Path, tmp_path: Path) -> None:
    # 0.1: Ctrl-D during a reply did nothing; the reply ran to its end.
    child = spawn_chat("-m", str(long_context_model), "--ctx", "16384", "--seed", "11", cwd=tmp_path)
    child.sendline("Tell me a very long story")
    child.expect_exact("\x1b[2m")  # reasoning is streaming
    child.sendcontrol("d")
    child.expect_exact("stopped by Ctrl-D; the partial reply stays in the history")
    child.expect(STATUS, searchwindowsize=4000)  # only the tail: the reply is kilobytes of noise
    assert int(child.match.group(1)) < 16000
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_keys_typed_during_a_reply_wait_at_the_next_prompt(long_context_model: Path, tmp_path: Path) -> None:
    # A reply of a few thousand tokens: the keys arrive while it streams, not after.
    child = spawn_chat("-m", str(long_context_model), "--ctx", "16384", "-n", "1500", "--seed", "2", cwd=tmp_path)
    child.sendline("Hello")
    child.expect_exact("\x1b[2m")
    child.send("next question")  # typed while the reply streams, not echoed over it
    child.expect(STATUS, searchwindowsize=4000)  # only the tail: the reply is kilobytes of noise
    child.expect_exact(PROMPT)
    child.expect_exact("next question")  # offered at the prompt, ready to edit or send
    send_turn(child, "")
    assert finish(child) == 0
