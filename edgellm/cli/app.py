"""The `edgellm` command line: parse, call, render. The work happens in the other modules.

Imports of llama_cpp happen only inside commands that load a model (through edgellm.runtime.engine),
so `edgellm --help`, `detect` and `profiles` stay fast.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from edgellm import __version__, ui
from edgellm.cli import options
from edgellm.cli.funnel import FunnelledGroup
from edgellm.errors import EdgeLLMError, PlanError, UsageError
from edgellm.serve.service import DEFAULT_WATCHDOG_S, MAX_WATCHDOG_S, MIN_WATCHDOG_S
from edgellm.units import parse_size

if TYPE_CHECKING:
    from edgellm.device.workers import Endpoint

app = typer.Typer(
    name="edgellm",
    cls=FunnelledGroup,  # the error funnel, attached once for every command
    help="Run quantized GGUF language models on edge hardware, with settings picked for the device.\n\n"
    "Example: edgellm chat",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
profiles_app = typer.Typer(
    help="List device profiles, or show one.\n\nExample: edgellm profiles show rk3588",
    invoke_without_command=True,
    no_args_is_help=False,
)
app.add_typer(profiles_app, name="profiles")

def _rpc_option(value: str | None) -> list[Endpoint]:
    from edgellm.device.workers import parse_endpoints

    return parse_endpoints(value)


def _size_option(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return parse_size(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


# Shared options -------------------------------------------------------------------------------------
ProfileOpt = Annotated[str | None, typer.Option("--profile", help="Profile name or .toml file (default: the one matching this device).")]
MemBudgetOpt = Annotated[str | None, typer.Option("--mem-budget", help="Cap the memory budget, e.g. 1.5GiB or 900MB.")]
CtxOpt = Annotated[int | None, typer.Option("--ctx", min=64, help="Context size in tokens (default: the profile's, shrunk to fit memory).")]
ThreadsOpt = Annotated[int | None, typer.Option("--threads", "-t", min=1, help="Generation threads (default: from the profile).")]
ThinkBudgetOpt = Annotated[int | None, typer.Option("--think-budget", min=0, help="End the reasoning after this many tokens and answer (0: no reasoning). Default: the profile's (none: the model decides).")]
NoThinkOpt = Annotated[bool, typer.Option("--no-think", help="Skip the reasoning: the answer starts at once.")]
ThinkMessageOpt = Annotated[str | None, typer.Option("--think-message", help="The line written into the reasoning when --think-budget runs out, before it closes.")]
StopOpt = Annotated[list[str] | None, typer.Option("--stop", help="End the reply before this text (repeatable, up to 4; \\n and \\t are understood), e.g. --stop '\\n\\n'.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")]
RpcOpt = Annotated[str | None, typer.Option("--rpc", help="Split the model's layers across this board and `edgellm worker`s: HOST:PORT[,HOST:PORT...], e.g. --rpc 192.168.1.21:50052.")]
def _sysroot_option(value: str) -> str:
    if not Path(value).is_dir():
        raise typer.BadParameter(f"{value} is not a directory (a capture with proc/ and sys/ inside)")
    return value


SysrootOpt = Annotated[str, typer.Option("--sysroot", callback=_sysroot_option, help="Read /proc and /sys below this directory (a capture of another device).")]


def _version_callback(value: bool) -> None:
    if value:
        print(f"edgellm {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: Annotated[bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="Show the version.")] = False,
) -> None:
    """Run quantized GGUF language models on edge hardware."""


# detect ---------------------------------------------------------------------------------------------


@app.command()
def detect(
    json_output: JsonOpt = False,
    sysroot: SysrootOpt = "/",
    profile: ProfileOpt = None,
) -> None:
    """Show the hardware edgellm sees and the device profile that matches it.

    Example: edgellm detect --json | jq .big_cores
    """
    from edgellm.device.hardware import detect as detect_device
    from edgellm.device.profiles import select_profile
    from edgellm.loader import build_warnings, llama_build_info

    device = detect_device(sysroot)
    chosen, reason = select_profile(device, profile)
    live = Path(sysroot).resolve() == Path("/")
    build = llama_build_info() if live else None
    warnings = build_warnings(device, build) if live else []
    data = {**device.to_json(), "profile": chosen.name, "profile_reason": reason, "llama_cpp_system_info": build,
            "warnings": warnings}
    ui.Output.choose(json=json_output).emit(data, lambda: ui.render_device(device, chosen.name, reason, build, warnings))


# profiles -------------------------------------------------------------------------------------------


@profiles_app.callback()
def profiles_list(
    ctx: typer.Context,
    json_output: JsonOpt = False,
    sysroot: SysrootOpt = "/",
) -> None:
    """List device profiles; * marks the one matching this device."""
    if ctx.invoked_subcommand is not None:
        return
    from edgellm.device.hardware import detect as detect_device
    from edgellm.device.profiles import load_profiles, select_profile

    profiles = load_profiles()
    matched, _ = select_profile(detect_device(sysroot), None, profiles)
    rows = [{"name": p.name, "matches": p.name == matched.name, "description": p.description, "source": p.source}
            for p in profiles]
    ui.Output.choose(json=json_output).emit(rows, lambda: ui.render_profiles(rows))


@profiles_app.command("show")
def profiles_show(
    name: Annotated[str, typer.Argument(help="Profile name or .toml file.")],
    json_output: JsonOpt = False,
) -> None:
    """Print one profile's settings.

    Example: edgellm profiles show raspberry-pi-5 --json
    """
    from edgellm.device.profiles import find_profile, load_profile_file, load_profiles

    profile = load_profile_file(Path(name)) if name.endswith(".toml") else find_profile(name, load_profiles())
    ui.Output.choose(json=json_output).emit(profile.to_json(), lambda: ui.render_profile(profile.to_json()))


# plan -----------------------------------------------------------------------------------------------


@app.command()
def plan(
    model: Annotated[str, typer.Argument(help="A .gguf file, a catalog name (deepseek-r1-7b[:Q4_K_S]) or owner/repo:QUANT; not downloaded by plan.")],
    ctx: CtxOpt = None,
    mem_budget: MemBudgetOpt = None,
    threads: ThreadsOpt = None,
    profile: ProfileOpt = None,
    sysroot: SysrootOpt = "/",
    parallel: Annotated[int | None, typer.Option("--parallel", "-np", min=1, max=64, help="Plan for serve with N slots, each with --ctx tokens (the KV cache holds them all).")] = None,
    rpc: RpcOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Decide how to run MODEL here (context, KV cache, cores, threads, memory) without loading it.

    With --rpc, the layers are split across this board and the workers by what each can hold (each worker is asked); `devices` in --json says which part goes where.

    Example: edgellm plan model.gguf --mem-budget 1.5GiB --json

    Example: edgellm plan deepseek-r1-7b --rpc 192.168.1.21:50052
    """
    from edgellm.loader import PlanOptions, prepare
    from edgellm.plan.planner import refusal_hint

    options = PlanOptions(profile=profile, ctx=ctx, mem_budget=_size_option(mem_budget), threads=threads, sysroot=sysroot,
                          parallel=parallel or 1, rpc=_rpc_option(rpc), notices=_notices())
    prepared = prepare(model, options, download=False)
    result = prepared.plan
    ui.Output.choose(json=json_output).emit(result.to_json, lambda: ui.render_plan(result))
    if not result.fits:
        raise PlanError(result.refusal or "the model does not fit", hint=refusal_hint(result))


# run ------------------------------------------------------------------------------------------------


@app.command()
def run(
    prompt: Annotated[str | None, typer.Argument(help="The prompt; piped stdin is appended after it.")] = None,
    model: Annotated[str, typer.Option("--model", "-m", help="A .gguf file, a catalog name (deepseek-r1-1.5b[:Q4_K_S]) or owner/repo:QUANT. Default: the profile's default model.")] = "",
    system: Annotated[str | None, typer.Option("--system", "-s", help="System prompt.")] = None,
    max_tokens: Annotated[int | None, typer.Option("--max-tokens", "-n", min=1, help="Stop after this many tokens.")] = None,
    temp: Annotated[float, typer.Option("--temp", min=0.0, help="Sampling temperature (0 = greedy).")] = 0.6,
    top_p: Annotated[float, typer.Option("--top-p", min=0.0, max=1.0, help="Nucleus sampling.")] = 0.95,
    seed: Annotated[int | None, typer.Option("--seed", help="Random seed, for repeatable output.")] = None,
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
    from edgellm.loader import PlanOptions, open_model, prepare
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
    plan_options = PlanOptions(profile=profile, ctx=ctx, mem_budget=_size_option(mem_budget), threads=threads, rpc=_rpc_option(rpc),
                               notices=_notices())
    prepared = prepare(model or None, plan_options, loading=True, yes=yes)
    options.apply_thinking(sampling, prepared.profile, think_budget, no_think, think_message)
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


@app.command()
def chat(
    model: Annotated[str | None, typer.Option("--model", "-m", help="A .gguf file or model name (default: the device profile's model).")] = None,
    system: Annotated[str | None, typer.Option("--system", "-s", help="System prompt (change it later with /system).")] = None,
    load: Annotated[Path | None, typer.Option("--load", help="Continue a conversation saved with /save.")] = None,
    think: Annotated[str | None, typer.Option("--think", help="Reasoning: hide, show (inline on stdout, in <think> tags) or stderr (dimmed). Default: stderr on a terminal, else hide.")] = None,
    temp: Annotated[float, typer.Option("--temp", min=0.0, help="Sampling temperature (0 = greedy).")] = 0.6,
    top_p: Annotated[float, typer.Option("--top-p", min=0.0, max=1.0, help="Nucleus sampling.")] = 0.95,
    max_tokens: Annotated[int | None, typer.Option("--max-tokens", "-n", min=1, help="Longest reply, in tokens.")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Random seed, for repeatable replies.")] = None,
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
    from edgellm.loader import PlanOptions, open_model
    from edgellm.paths import chat_history_file
    from edgellm.runtime.types import SamplingParams
    from edgellm.ui import chat_session as repl

    interactive = sys.stdin.isatty()
    think = ui.think_mode(think, interactive)
    conversation = repl.load_transcript(load) if load is not None else repl.Conversation()
    if system:
        conversation.system = system
    sampling = SamplingParams(max_tokens=max_tokens, temperature=temp, top_p=top_p, seed=seed, stop=options.stop_values(stop))
    plan_options = PlanOptions(profile=profile, ctx=ctx, mem_budget=_size_option(mem_budget), threads=threads, rpc=_rpc_option(rpc),
                               notices=_notices())
    prepared = repl.prepare_model(model, plan_options, announce=interactive)
    options.apply_thinking(sampling, prepared.profile, think_budget, no_think, think_message)
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


bench_app = typer.Typer(
    help="Measure prompt and generation speed, memory and heat, as llama.cpp's llama-bench does.\n\n"
    "Example: edgellm bench -m model.gguf --json\n\n"
    "How many users a board can serve: edgellm bench -m model.gguf --parallel 1,2,4",
    invoke_without_command=True,
    no_args_is_help=False,
)
app.add_typer(bench_app, name="bench")


@bench_app.callback()
def bench(
    ctx: typer.Context,
    model: Annotated[str | None, typer.Option("--model", "-m", help="A .gguf file.")] = None,
    synthetic: Annotated[str | None, typer.Option("--synthetic", help="Benchmark a synthetic model of this shape, built once and cached, e.g. deepseek-r1-7b:Q4_K_M (random weights: the speed is the real model's, the text is noise).")] = None,
    n_prompt: Annotated[str, typer.Option("--n-prompt", "-p", help="Prompt sizes to test (pp), comma-separated; 0 skips.")] = "512",
    n_gen: Annotated[str, typer.Option("--n-gen", "-n", help="Generation lengths to test (tg), comma-separated; 0 skips.")] = "128",
    threads: Annotated[str | None, typer.Option("--threads", "-t", help="Thread counts, comma-separated, e.g. 1,2,4 (default: the profile's).")] = None,
    reps: Annotated[int, typer.Option("--repetitions", "-r", min=1, help="Timed repetitions per test, after one warm-up.")] = 5,
    depth: Annotated[str, typer.Option("--depth", "-d", help="Tokens already in the context before each test, comma-separated.")] = "0",
    cores: Annotated[list[str] | None, typer.Option("--cores", help="big, all (llama.cpp's default: no pinning) or CPU ids like 4-7; repeat to compare (default: the profile's).")] = None,
    cooldown: Annotated[float, typer.Option("--cooldown", min=0.0, help="Seconds to rest between tests.")] = 0.0,
    cool_to: Annotated[float | None, typer.Option("--cool-to", help="Between tests, wait until the CPU is below this many °C (at most 10 minutes).")] = None,
    duration: Annotated[str | None, typer.Option("--duration", help="Soak: generate continuously this long (e.g. 30m) and compare sustained with first-minute t/s.")] = None,
    parallel: Annotated[str | None, typer.Option("--parallel", help="Sequences decoded at once, comma-separated, e.g. 1,2,4: aggregate generation (and prompt) t/s for each count, measured as llama.cpp's llama-batched-bench (every sequence: its own -p prompt, then -n tokens). Example: edgellm bench --synthetic deepseek-r1-1.5b --parallel 1,2,4 -n 32")] = None,
    profile: ProfileOpt = None,
    mem_budget: MemBudgetOpt = None,
    rpc: RpcOpt = None,
    json_output: JsonOpt = False,
    csv_output: Annotated[bool, typer.Option("--csv", help="Print CSV on stdout.")] = False,
    markdown: Annotated[bool, typer.Option("--markdown", help="Print a markdown table on stdout (for pasting into issues).")] = False,
) -> None:
    """Measure prompt (pp) and generation (tg) tokens/s, load time, first-token latency, memory and heat.

    Numbers are measured as llama.cpp's llama-bench measures them (random tokens, one warm-up,
    -r repetitions, mean ± standard deviation). `edgellm bench report FILE...` merges --json results
    from several devices into one table.

    --parallel 1,2,4 measures as llama-batched-bench does instead: N prompts, then every step one
    batch with a token of each of the N sequences; generation t/s of all N together tells how many
    users the board can serve.

    Example: edgellm bench --synthetic deepseek-r1-1.5b -t 1,2,4 --markdown

    Example: edgellm bench --synthetic deepseek-r1-1.5b --parallel 1,2,4 -p 512 -n 32
    """
    if ctx.invoked_subcommand is not None:
        return
    from edgellm.bench import runner as benchmark
    from edgellm.units import parse_duration

    output = ui.Output.choose(json=json_output, csv=csv_output, markdown=markdown)
    if not model and not synthetic:
        raise UsageError("no model: pass -m FILE.gguf or --synthetic NAME", hint="edgellm bench --synthetic deepseek-r1-1.5b")
    if model and synthetic:
        raise UsageError("-m and --synthetic cannot be combined")
    thread_counts = options.bench_threads(threads)
    for warning in options.oversubscribed_threads(thread_counts):
        ui.warn(warning)
    config = benchmark.BenchConfig(
        model=model,
        synthetic=synthetic,
        prompts=options.parse_int_list(n_prompt, "-p"),
        gens=options.parse_int_list(n_gen, "-n"),
        threads=thread_counts,
        depths=options.parse_int_list(depth, "--depth"),
        reps=reps,
        cooldown_s=cooldown,
        cool_to_c=cool_to,
        duration_s=parse_duration(duration) if duration else None,
        parallel=options.parse_parallel(parallel) if parallel is not None else None,
        profile=profile,
        mem_budget=_size_option(mem_budget),
        rpc=[str(e) for e in _rpc_option(rpc)],
    )
    if not config.duration_s and not any(config.prompts + config.gens):
        raise UsageError("nothing to measure: -p and -n are both 0")
    choices = list(dict.fromkeys(cores or []))
    for choice in choices:
        if choice not in ("big", "all"):
            benchmark.parse_cpu_list(choice)
    if len(choices) > 1:
        report = benchmark.run_cores_sweep(config, choices, say=ui.info)
    else:
        config.cores = choices[0] if choices else None
        with ui.BenchProgress(ui.stderr_is_terminal()) as bar:
            report = benchmark.run(config, progress=bar.update, say=ui.info, notices=_notices())
    data = report.to_json()  # every view reads the JSON, as `bench report` reads files
    output.emit(data, lambda: ui.render_bench_report(data), csv=lambda: ui.bench_csv(data),
                markdown=lambda: ui.bench_markdown(data))


@bench_app.command("report")
def bench_report(
    files: Annotated[list[Path], typer.Argument(help="JSON files written by `edgellm bench --json`.")],
    markdown: Annotated[bool, typer.Option("--markdown", help="Print a markdown table (for READMEs and issues).")] = False,
    json_output: JsonOpt = False,
) -> None:
    """Merge `edgellm bench --json` results from several devices into one comparison table.

    Example: edgellm bench report pi5.json rk3588.json --markdown
    """
    from edgellm.bench import reports

    output = ui.Output.choose(json=json_output, markdown=markdown)
    merged = reports.merge_reports(reports.load_reports(files))
    output.emit(merged, lambda: ui.render_table(merged["headers"], merged["rows"]), markdown=lambda: ui.merged_markdown(merged))


@app.command()
def pull(
    model: Annotated[str, typer.Argument(help="A catalog name[:QUANT] (see `edgellm models`), owner/repo[:QUANT] or owner/repo/file.gguf.")],
    revision: Annotated[str | None, typer.Option("--revision", help="Branch, tag or commit (default: the catalog's pin, else main).")] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask before downloads over 1 GB.")] = False,
    profile: ProfileOpt = None,
    mem_budget: MemBudgetOpt = None,
    ctx: CtxOpt = None,
    sysroot: SysrootOpt = "/",
    json_output: JsonOpt = False,
) -> None:
    """Download a model from Hugging Face into its cache, resuming and verifying it (sha256).

    Without :QUANT the planner picks the best quant that fits this device. Prints the file's path.

    Example: edgellm pull deepseek-r1-1.5b
    """
    from edgellm.device.hardware import detect as detect_device
    from edgellm.device.profiles import select_profile
    from edgellm.plan import resolve as store
    from edgellm.store.refs import parse_spec

    parsed = parse_spec(model, revision)
    if isinstance(parsed, Path):
        raise UsageError(f"{model} is a local path; pull takes a model name or a Hugging Face repo",
                         hint="edgellm pull deepseek-r1-1.5b  (see `edgellm models`)")
    device = detect_device(sysroot)
    chosen_profile, _ = select_profile(device, profile)
    located = store.locate(parsed, device, chosen_profile, ctx=ctx, mem_budget=_size_option(mem_budget), for_pull=True)
    already = located.path is not None
    if already:
        ui.info(f"{located.name} is already downloaded")
    notices = _notices()
    path = store.fetch(located, yes=yes, say=notices.info, confirm=notices.confirm, progress_factory=notices.progress)
    data = {"name": located.name, "repo": parsed.repo, "revision": parsed.revision, "quant": located.quant,
            "file": located.filename, "size": path.stat().st_size, "path": str(path),
            "sha256": located.remote.sha256 if located.remote else None, "reason": located.reason,
            "already_downloaded": already}
    ui.Output.choose(json=json_output).emit(data, lambda: ui.print_text(str(path)))


@app.command()
def models(
    profile: ProfileOpt = None,
    mem_budget: MemBudgetOpt = None,
    ctx: CtxOpt = None,
    sysroot: SysrootOpt = "/",
    json_output: JsonOpt = False,
) -> None:
    """List the models edgellm knows: size per quant, downloaded or not, and whether it fits this device.

    Example: edgellm models --json
    """
    from edgellm.device.hardware import detect as detect_device
    from edgellm.device.profiles import select_profile
    from edgellm.plan import resolve as store

    device = detect_device(sysroot)
    chosen_profile, _ = select_profile(device, profile)
    rows = store.catalog_rows(device, chosen_profile, ctx=ctx, mem_budget=_size_option(mem_budget))
    ui.Output.choose(json=json_output).emit(rows, lambda: ui.print_text(ui.catalog_text(rows, chosen_profile)))


@app.command(name="ls")
def list_downloaded(json_output: JsonOpt = False) -> None:
    """List downloaded models (GGUF files in the Hugging Face cache) with size, quant and path.

    Example: edgellm ls --json | jq -r '.[].path'
    """
    from edgellm.store import cache as store

    items = store.list_downloaded()
    def show() -> None:
        if items:
            ui.print_text(ui.downloaded_text(items))
        else:
            ui.info("no models downloaded yet: try `edgellm pull deepseek-r1-1.5b` (or see `edgellm models`)")

    ui.Output.choose(json=json_output).emit([item.to_json() for item in items], show)


@app.command(name="rm")
def remove(
    model: Annotated[str, typer.Argument(help="NAME (every quant), NAME:QUANT, owner/repo[:QUANT] or owner/repo/file.gguf, as `edgellm ls` shows.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Delete without asking.")] = False,
    json_output: JsonOpt = False,
) -> None:
    """Delete a downloaded model from the Hugging Face cache.

    Example: edgellm rm deepseek-r1-1.5b:Q4_K_M
    """
    from edgellm.errors import ModelNotFoundError
    from edgellm.store import cache as store
    from edgellm.units import format_size

    items = store.match_downloaded(model)
    if not items:
        raise ModelNotFoundError(f"{model} is not downloaded", hint="see `edgellm ls` for downloaded models")
    described = ", ".join(f"{item.name} ({format_size(item.size)})" for item in items)
    if not yes:
        if not ui.interactive():
            raise UsageError(f"rm needs confirmation to delete {described}", hint=f"edgellm rm {model} -y")
        if not ui.confirm(f"Delete {described}?"):
            ui.info("nothing deleted")
            raise typer.Exit(1)
    freed = store.remove(items)
    ui.Output.choose(json=json_output).emit({"removed": [item.to_json() for item in items], "freed_bytes": freed},
                                            lambda: ui.info(f"deleted {described}; {format_size(freed)} freed"))


@app.command()
def serve(
    model: Annotated[str, typer.Option("--model", "-m", help="A .gguf file, a catalog name (deepseek-r1-1.5b[:Q4_K_S]) or owner/repo:QUANT. Default: the profile's default model.")] = "",
    host: Annotated[str, typer.Option("--host", help="Address to listen on; anything but loopback needs --api-key or --insecure.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", min=0, max=65535, help="Port to listen on (0: any free port).")] = 8080,
    api_key: Annotated[str | None, typer.Option("--api-key", envvar="EDGELLM_API_KEY", help="Require 'Authorization: Bearer KEY' (or set EDGELLM_API_KEY).")] = None,
    api_key_file: Annotated[str | None, typer.Option("--api-key-file", help="Read the API key from the first line of FILE (mode 600), so it is not on the command line.")] = None,
    insecure: Annotated[bool, typer.Option("--insecure", help="Allow a non-loopback --host without an API key.")] = False,
    alias: Annotated[str | None, typer.Option("--alias", help="Model id shown in /v1/models (default: the file name).")] = None,
    allow_host: Annotated[list[str] | None, typer.Option("--allow-host", help="On loopback, also answer requests whose Host is NAME (others get 403: DNS rebinding protection); repeat for more.")] = None,
    cors: Annotated[list[str] | None, typer.Option("--cors", help="Let web pages from ORIGIN (e.g. http://localhost:3000, or '*') call the API from a browser; repeat for more. Off by default.")] = None,
    parallel: Annotated[int | None, typer.Option("--parallel", "-np", min=1, max=64, help="Requests generated at once (continuous batching), each with --ctx tokens of context. Default: as many as fit memory, at most 4.")] = None,
    queue: Annotated[int, typer.Option("--queue", min=0, help="Requests that may wait while all slots generate; more get 503.")] = 8,
    truncate: Annotated[str, typer.Option("--truncate", help="A chat history longer than a slot: drop the oldest turns (oldest; the system prompt stays) or answer 400 (error).")] = "oldest",
    max_tokens: Annotated[int | None, typer.Option("--max-tokens", "-n", min=1, help="Largest max_tokens a request may ask for (default: the context size).")] = None,
    ctx: CtxOpt = None,
    threads: ThreadsOpt = None,
    profile: ProfileOpt = None,
    mem_budget: MemBudgetOpt = None,
    think_budget: ThinkBudgetOpt = None,
    think_message: ThinkMessageOpt = None,
    idle_unload: Annotated[str | None, typer.Option("--idle-unload", help="Free the model after this long without requests (e.g. 10m, 1h); the next request loads it again.")] = None,
    rpc: RpcOpt = None,
) -> None:
    """Serve a model over an OpenAI-compatible HTTP API (for Open WebUI, the openai client, curl).

    Endpoints: GET /v1/models, POST /v1/chat/completions, POST /v1/completions, GET /health,
    GET /metrics, GET /slots. Reasoning goes to `reasoning_content`. Several requests generate at
    once (--parallel slots, continuous batching); more wait in the queue.

    Example: edgellm serve -m model.gguf --port 8080
    """
    from edgellm import serve as server
    from edgellm.device.hardware import format_cpu_list
    from edgellm.loader import PlanOptions, open_model, prepare
    from edgellm.serve.lifecycle import install_test_stall
    from edgellm.serve.sdnotify import Notifier
    from edgellm.units import parse_duration

    if not model:
        raise UsageError("no model: pass -m FILE.gguf", hint="edgellm serve -m ~/models/model.gguf")
    if truncate not in ("oldest", "error"):
        raise UsageError(f"--truncate must be oldest or error, not '{truncate}'")
    if api_key_file is not None:
        if api_key:
            raise UsageError("use either --api-key (or EDGELLM_API_KEY) or --api-key-file, not both")
        api_key = server.read_api_key_file(api_key_file)
    idle_unload_s = parse_duration(idle_unload, "--idle-unload") if idle_unload is not None else None
    server.check_bind(host, api_key, insecure)
    plan_options = PlanOptions(profile=profile, ctx=ctx, mem_budget=_size_option(mem_budget), threads=threads,
                               parallel=parallel, rpc=_rpc_option(rpc), notices=_notices())
    prepared = prepare(model, plan_options, loading=True)
    plan_ = prepared.plan
    parallel = plan_.parallel
    if max_tokens is not None and max_tokens > plan_.n_ctx_per_slot:
        raise UsageError(f"--max-tokens {max_tokens} is larger than a slot's context ({plan_.n_ctx_per_slot} tokens)", hint="raise --ctx, or lower --max-tokens")
    sock = server.listen(host, port)
    model_id = alias or (prepared.model.path.stem if prepared.model.path else model)
    slots = f", {parallel} slots of {plan_.n_ctx_per_slot} tokens" if parallel > 1 else ""
    ui.info(f"loading {model_id}: context {plan_.n_ctx}{slots}, {plan_.threads} threads on cores {format_cpu_list(plan_.cores)} ({prepared.profile.name})")
    notifier = Notifier()
    if notifier.enabled and not notifier.status(f"loading {model_id}"):
        ui.warn(f"{notifier.failed}: systemd will not hear that the server is ready")

    loaded = open_model(prepared, plan_options, sequences=parallel)
    engine = loaded.engine
    install_test_stall(engine.scheduler)
    server.warm_up(engine)
    slot_ctx = plan_.n_ctx_per_slot
    config = server.ServerConfig(model_id=model_id, api_key=api_key, max_tokens_limit=min(max_tokens or slot_ctx, slot_ctx), queue_size=queue,
                                 allowed_hosts=server.allowed_hosts(host, allow_host or []), cors_origins=list(cors or []),
                                 truncate=truncate, idle_unload_s=idle_unload_s,
                                 **options.serve_thinking(prepared.profile, think_budget, think_message))
    url = server.url_of(sock)
    ui.info(f"serving {model_id} at {url}/v1 (OpenAI API{', API key required' if api_key else ''}); Ctrl-C stops")
    if notifier.enabled:
        watchdog = f", watchdog every {notifier.watchdog_s:g}s" if notifier.watchdog_s else ""
        ui.info(f"systemd: telling it when ready{watchdog}")
    try:
        server.serve(engine, config, sock, notifier=notifier, load_engine=loaded.reload)
    finally:
        engine.close()
        sock.close()
        notifier.close()
    ui.info("stopped")


# worker ---------------------------------------------------------------------------------------------


@app.command()
def worker(
    host: Annotated[str, typer.Option("--host", help="Address to listen on (IPv4). Other than loopback needs --allow-lan.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", min=1, max=65535, help="TCP port.")] = 50052,
    mem: Annotated[str | None, typer.Option("--mem", help="Memory offered to the main board, e.g. 3GiB (default: what this board can hold: available memory minus the profile's OS reserve).")] = None,
    threads: ThreadsOpt = None,
    allow_lan: Annotated[bool, typer.Option("--allow-lan", help="Allow a non-loopback --host. The worker has no authentication: anyone who reaches the port can use it. Trusted LANs only.")] = False,
    idle_timeout: Annotated[float | None, typer.Option("--idle-timeout", help="Drop a client that has sent nothing for this many seconds while it waits for no reply (default: 300; an edgellm main board that idles keeps its connection alive).")] = None,
    profile: ProfileOpt = None,
    sysroot: SysrootOpt = "/",
) -> None:
    """Lend this board's CPU and memory to another board's edgellm (llama.cpp's RPC backend).

    On the main board, --rpc HOST:PORT on plan, run, chat, serve and bench splits the model's layers across it and the workers, by what each offers. The worker runs on the profile's big cores and prints one line saying where it listens and how much memory it offers. It serves one main board at a time, refuses requests larger than what it offers, and drops idle clients. It has no authentication: run it on a trusted LAN only.

    Example (on the worker board): edgellm worker --host 0.0.0.0 --allow-lan --mem 3GiB

    Example (on the main board): edgellm run -m deepseek-r1-7b --rpc 192.168.1.21:50052 "Hello"
    """
    from edgellm.worker import host as rpc_worker

    plan_ = rpc_worker.plan_worker(host, port, mem=_size_option(mem), threads=threads, allow_lan=allow_lan,
                                   profile=profile, sysroot=sysroot, idle_s=idle_timeout)
    rpc_worker.run_worker(plan_, say=ui.print_text, warn=ui.warn)


# `edgellm service` -------------------------------------------------------------------------------

service_app = typer.Typer(
    help="Run `edgellm serve` as a systemd service: started at boot, restarted when it hangs or dies.\n\n"
    "Example: sudo edgellm service install -m deepseek-r1-1.5b --host 0.0.0.0",
    no_args_is_help=True,
)
app.add_typer(service_app, name="service")
# install and unit pass the options they do not know to `edgellm serve` in the unit.
SERVE_PASSTHROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}
ServiceModelOpt = Annotated[str, typer.Option("--model", "-m", help="A .gguf file, a catalog name or owner/repo:QUANT (pulled if needed).")]
UserOpt = Annotated[bool, typer.Option("--user", help="A user service (systemctl --user) run as you, instead of a system service run by the edgellm user.")]
WatchdogOpt = Annotated[int, typer.Option("--watchdog", help=f"Seconds without a sign of life before systemd restarts serve (WatchdogSec=; {MIN_WATCHDOG_S} to {MAX_WATCHDOG_S}).")]
KeyFileOpt = Annotated[str | None, typer.Option("--api-key-file", help="The API key's file (mode 600). Default: a new random key in /etc/edgellm/api-key (or ~/.config/edgellm/api-key with --user).")]


@service_app.command("install", context_settings=SERVE_PASSTHROUGH)
def service_install(ctx: typer.Context, model: ServiceModelOpt, user: UserOpt = False,
                    watchdog: WatchdogOpt = DEFAULT_WATCHDOG_S, api_key_file: KeyFileOpt = None) -> None:
    """Write a systemd unit for `edgellm serve` (other options go to serve), enable it and start it.

    Without --user it is a system service, run by a dedicated edgellm user with its models in
    /var/lib/edgellm (needs root). Start returns once the model is loaded and answers.

    Example: sudo edgellm service install -m deepseek-r1-1.5b --host 0.0.0.0 --port 8080
    """
    from edgellm.serve import service

    done = service.install(model, list(ctx.args), user_mode=user, key_file=Path(api_key_file) if api_key_file else None,
                           watchdog_s=watchdog, say=ui.info, notices=_notices())
    ui.info(f"{service.UNIT_NAME} is running and enabled: {done.url}")
    key_note = "a new key" if done.key_created else "the key"
    ui.info(f"{key_note} is in {done.key_file}; clients send it as 'Authorization: Bearer KEY'")
    if user:
        ui.info(f"to start it at boot without logging in: sudo loginctl enable-linger {os.environ.get('USER', '$USER')}")
    ui.info(f"see it with: edgellm service status{' --user' if user else ''}")


@service_app.command("unit", context_settings=SERVE_PASSTHROUGH)
def service_unit(ctx: typer.Context, model: ServiceModelOpt, user: UserOpt = False,
                 watchdog: WatchdogOpt = DEFAULT_WATCHDOG_S, api_key_file: KeyFileOpt = None) -> None:
    """Print the unit `install` would write, without installing anything (the model must be here).

    Example: edgellm service unit -m ~/models/model.gguf --port 8081 > edgellm.service
    """
    from edgellm.serve import service

    key = service.key_file_path(api_key_file) if api_key_file else service.default_key_file(user)
    spec = service.build_spec(service.model_file(model, download=False), list(ctx.args), user_mode=user, key_file=key, watchdog_s=watchdog)
    ui.print_text(service.render_unit(spec))


@service_app.command("status")
def service_status(user: UserOpt = False) -> None:
    """Show whether the service runs, its last log lines and serve's own status line.

    Example: edgellm service status
    """
    from edgellm.serve import service

    shown = service.status(user)
    ui.print_text(shown.stdout)
    if shown.returncode != 0:
        raise typer.Exit(shown.returncode)


@service_app.command("logs")
def service_logs(user: UserOpt = False, lines: Annotated[int, typer.Option("--lines", "-n", min=1, help="How many lines.")] = 50,
                 follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines.")] = False) -> None:
    """The service's log (the journal).

    Example: edgellm service logs -f
    """
    from edgellm.serve import service

    command = service.logs_command(user, lines, follow)
    try:
        raise typer.Exit(subprocess.call(command))
    except FileNotFoundError:
        raise UsageError("journalctl is not installed: edgellm service needs systemd") from None


@service_app.command("uninstall")
def service_uninstall(user: UserOpt = False) -> None:
    """Stop and disable the service and remove its unit; models and the key file stay.

    Example: sudo edgellm service uninstall
    """
    from edgellm.serve import service

    service.require_root(user)
    removed = service.stop_and_remove(user)
    if removed is None:
        ui.info(f"{service.UNIT_NAME} was not installed{' for this user' if user else ''}")
        return
    kept = str(service.default_key_file(user)) + ("" if user else f" and {service.STATE_DIR} (the models)")
    ui.info(f"removed {removed}; kept {kept}: delete by hand what you no longer want")


def _notices() -> Any:
    """The loader's notices on this terminal: info and warnings on stderr, a confirm prompt only
    when someone is there to answer, Rich download progress."""
    from edgellm.loader import Notices

    return Notices(info=ui.info, warn=ui.warn, confirm=ui.confirm if ui.interactive() else None, progress=ui.download_progress)


def main() -> None:
    """Console-script entry point."""
    ui.guard_stdout()
    try:
        app()
    except KeyboardInterrupt:  # Ctrl-C while parsing or importing, outside any command
        sys.stderr.write("\n")
        sys.exit(130)
