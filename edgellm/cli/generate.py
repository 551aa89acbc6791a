"""`edgellm` commands: run (a prompt or a pipe, to stdout) and chat (a conversation in the terminal)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from edgellm import ui
from edgellm.cli import options
from edgellm.cli.options import (
    CtxOpt,
    MaxTokensOpt,
    MemBudgetOpt,
    NoThinkOpt,
    ProfileOpt,
    RpcOpt,
    SeedOpt,
    StopOpt,
    TempOpt,
    ThinkBudgetOpt,
    ThinkMessageOpt,
    ThreadsOpt,
    TopPOpt,
)
from edgellm.errors import EdgeLLMError, UsageError


def run(
    prompt: Annotated[str | None, typer.Argument(help="The prompt; piped stdin is appended after it.")] = None,
    model: Annotated[str, typer.Option("--model", "-m", help="A .gguf file, a catalog name (deepseek-r1-1.5b[:Q4_K_S]) or owner/repo:QUANT. Default: the profile's default model.")] = "",
    system: Annotated[str | None, typer.Option("--system", "-s", help="System prompt.")] = None,
    max_tokens: MaxTokensOpt = None,
    temp: TempOpt = 0.6,
    top_p: TopPOpt = 0.95,
    seed: SeedOpt = None,
    ctx: CtxOpt = None,
    threads: ThreadsOpt = None,
    profile: ProfileOpt = None,
    mem_budget: MemBudgetOpt = None,
    think: Annotated[str | None, typer.Option("--think", help="Reasoning: hide, show (inline on stdout, in <think> tags) or stderr (dimmed). Default: stderr on a terminal, else hide.")] = None,
    stats: Annotated[bool, typer.Option("--stats", help="Print a stats line to stderr.")] = False,
    grammar: Annotated[Path | None, typer.Option("--grammar", help="Constrain output with a GBNF grammar file.")] = None,
    schema: Annotated[Path | None, typer.Option("--schema", help="Constrain output to a JSON Schema file.")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print {answer, reasoning, finish_reason, stats} as JSON.")] = False,
    jsonl: Annotated[bool, typer.Option("--jsonl", help="Each stdin line is a prompt; print one JSON line per prompt.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Download a model that is not here yet without asking.")] = False,
    stop: StopOpt = None,
    tools: Annotated[Path | None, typer.Option("--tools", help="A JSON file with an OpenAI `tools` array: the model may call them; each call prints as one JSON line on stdout.")] = None,
    tool_choice: Annotated[str | None, typer.Option("--tool-choice", help="With --tools: auto (default), required, none, or a tool's name (call that one).")] = None,
    think_budget: ThinkBudgetOpt = None,
    no_think: NoThinkOpt = False,
    think_message: ThinkMessageOpt = None,
    rpc: RpcOpt = None,
) -> None:
    """Generate a reply for a prompt and stream it to stdout (for shells and scripts).

    Example: cat notes.txt | edgellm run -m model.gguf "Summarise:" > summary.md

    Tools: edgellm run -m MODEL --tools tools.json --tool-choice required "Weather in Oslo?"
    prints {"name": "get_weather", "arguments": {"city": "Oslo"}}
    """
    from edgellm.loader import open_model, prepare
    from edgellm.runtime.types import SamplingParams
    from edgellm.ui import runner

    if json_output and jsonl:
        raise UsageError("--json and --jsonl cannot be combined")
    ui.require_stdout()
    ui.think_mode(think, ui.stderr_is_terminal())  # checked before the model loads
    if grammar is not None and schema is not None:
        raise UsageError("use --grammar or --schema, not both", hint="a JSON Schema is turned into a grammar itself")
    sampling = SamplingParams(
        max_tokens=max_tokens, temperature=temp, top_p=top_p, seed=seed,
        grammar=options.read_text_file(grammar, "--grammar"), json_schema=options.read_text_file(schema, "--schema"),
        stop=options.stop_values(stop), grammar_is_answer=schema is not None,
    )
    tool_list = options.tools_file(tools, tool_choice)
    if tool_list is not None and (grammar is not None or schema is not None):
        raise UsageError("use --tools or --grammar/--schema, not both")
    piped, replaced = runner.read_stdin()
    if replaced:
        ui.warn("stdin is not valid UTF-8: undecodable bytes were replaced with U+FFFD")
    request = runner.RunRequest(prompt=prompt, system=system, think=think, json_output=json_output,
                                jsonl=jsonl, show_stats=stats, sampling=sampling)
    text = None if jsonl else runner.build_prompt(prompt, piped)
    if jsonl and not piped:
        raise UsageError("--jsonl reads prompts from stdin, one per line", hint="edgellm run -m MODEL --jsonl < prompts.txt")
    options.check_thinking(think_budget, no_think)
    plan_options = options.plan_options(profile, ctx, mem_budget, threads, rpc, think_budget=think_budget)
    prepared = prepare(model or None, plan_options, loading=True, yes=yes)
    options.apply_thinking(sampling, prepared.plan, no_think, think_message)
    loaded = open_model(prepared, plan_options, fit=(runner.messages_for(text, system), sampling) if text is not None else None)
    engine = loaded.engine
    if tool_list is not None:
        from edgellm.text.toolcalls import ToolUse

        sampling.tool_use = ToolUse(engine.tool_format, *tool_list)
    try:
        if jsonl:
            runner.run_jsonl(engine, request, piped or "")
        else:
            runner.run_one(engine, request, text or "")
    finally:
        engine.close()


def chat(
    model: Annotated[str | None, typer.Option("--model", "-m", help="A .gguf file or model name (default: the device profile's model).")] = None,
    system: Annotated[str | None, typer.Option("--system", "-s", help="System prompt (change it later with /system).")] = None,
    load: Annotated[Path | None, typer.Option("--load", help="Continue a conversation saved with /save.")] = None,
    think: Annotated[str | None, typer.Option("--think", help="Reasoning: hide, show (inline on stdout, in <think> tags) or stderr (dimmed). Default: stderr on a terminal, else hide.")] = None,
    temp: TempOpt = 0.6,
    top_p: TopPOpt = 0.95,
    max_tokens: MaxTokensOpt = None,
    seed: SeedOpt = None,
    ctx: CtxOpt = None,
    threads: ThreadsOpt = None,
    profile: ProfileOpt = None,
    mem_budget: MemBudgetOpt = None,
    stop: StopOpt = None,
    think_budget: ThinkBudgetOpt = None,
    no_think: NoThinkOpt = False,
    think_message: ThinkMessageOpt = None,
    rpc: RpcOpt = None,
) -> None:
    """Chat with a model in the terminal: streaming replies, history, slash commands (/help).

    On a terminal it has line editing and input history; with piped stdin each line is one turn and replies are plain text on stdout.

    Example: edgellm chat -m ~/models/DeepSeek-R1-Distill-Qwen-1.5B-Q4_K_M.gguf --system "Be brief."
    """
    from edgellm.loader import open_model, prepare
    from edgellm.paths import chat_history_file
    from edgellm.runtime.types import SamplingParams
    from edgellm.ui import chat_session as repl

    interactive = sys.stdin.isatty()
    think = ui.think_mode(think, interactive)
    conversation = repl.load_transcript(load) if load is not None else repl.Conversation()
    if system:
        conversation.system = system
    sampling = SamplingParams(max_tokens=max_tokens, temperature=temp, top_p=top_p, seed=seed, stop=options.stop_values(stop))
    options.check_thinking(think_budget, no_think)
    plan_options = options.plan_options(profile, ctx, mem_budget, threads, rpc, think_budget=think_budget)
    if interactive:
        ui.info(f"loading {model}" if model else "no -m given: loading the device profile's default model")
    prepared = prepare(model, plan_options, loading=True)
    options.apply_thinking(sampling, prepared.plan, no_think, think_message)
    loaded = open_model(prepared, plan_options)

    def grow(messages: list[dict[str, str]]) -> Any:
        """A context for a message too long for this one (see ChatOptions.grow)."""
        return loaded.engine if loaded.grow_to(messages, sampling) else None

    try:
        chat_options = repl.ChatOptions(think=think, interactive=interactive, history_file=chat_history_file(), grow=grow)
        failures = repl.run_chat(loaded.engine, conversation, sampling, chat_options)
    finally:
        loaded.close()
    if failures and not interactive:
        # Every line was still processed; the script learns that some of them failed.
        raise EdgeLLMError(f"{failures} piped {'line' if failures == 1 else 'lines'} failed (see above)")
