"""`edgellm` commands: bench (tokens per second on this device, as llama-bench measures) and bench report (several devices merged)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgellm import ui
from edgellm.cli import options
from edgellm.cli.options import JsonOpt, MemBudgetOpt, ProfileOpt, RpcOpt, rpc_endpoints, size_option, terminal_notices
from edgellm.errors import UsageError

bench_app = typer.Typer(
    help="Measure prompt and generation speed, memory and heat, as llama.cpp's llama-bench does.\n\n"
    "Example: edgellm bench -m model.gguf --json\n\n"
    "How many users a board can serve: edgellm bench -m model.gguf --parallel 1,2,4",
    invoke_without_command=True,
    no_args_is_help=False,
)


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
    forget: Annotated[bool, typer.Option("--forget", help="Drop what bench measured on this device: plan predicts speed from the profile's estimate again.")] = False,
) -> None:
    """Measure prompt (pp) and generation (tg) tokens/s, load time, first-token latency, memory and heat.

    Numbers are measured as llama.cpp's llama-bench measures them (random tokens, one warm-up, -r repetitions, mean ± standard deviation). `edgellm bench report FILE...` merges --json results from several devices into one table.

    --parallel 1,2,4 measures as llama-batched-bench does instead: N prompts, then every step one batch with a token of each of the N sequences; generation t/s of all N together tells how many users the board can serve.

    Example: edgellm bench --synthetic deepseek-r1-1.5b -t 1,2,4 --markdown

    Example: edgellm bench --synthetic deepseek-r1-1.5b --parallel 1,2,4 -p 512 -n 32

    A run on the plan's threads and cores is kept for this device: `edgellm plan` then predicts generation speed from the bandwidth it measured (effective bandwidth from tg, prompt speed by model shape) and says so. edgellm bench --forget drops it.
    """
    if ctx.invoked_subcommand is not None:
        return
    if forget:
        _forget(profile)
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
        mem_budget=size_option(mem_budget),
        rpc=[str(e) for e in rpc_endpoints(rpc)],
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
            report = benchmark.run(config, progress=bar.update, say=ui.info, notices=terminal_notices())
    data = report.to_json()  # every view reads the JSON, as `bench report` reads files
    output.emit(data, lambda: ui.render_bench_report(data), csv=lambda: ui.bench_csv(data),
                markdown=lambda: ui.bench_markdown(data))


def _forget(profile: str | None) -> None:
    from edgellm.device.profiles import this_device
    from edgellm.store import measured

    device, _, _ = this_device("/", profile)
    dropped = measured.forget(device.identity)
    if dropped is None:
        ui.info("nothing measured on this device to forget")
    else:
        ui.info(f"forgot {dropped.describe().split(' (', 1)[0]}: plan predicts from the profile's estimate again")


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
