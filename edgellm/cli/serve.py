"""`edgellm` commands: serve (the OpenAI-compatible server) and the service group (a systemd unit for it)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Annotated

import typer

from edgellm import ui
from edgellm.cli import options
from edgellm.cli.options import (
    CtxOpt,
    MemBudgetOpt,
    ProfileOpt,
    RpcOpt,
    ThinkBudgetOpt,
    ThinkMessageOpt,
    ThreadsOpt,
    terminal_notices,
)
from edgellm.errors import UsageError
from edgellm.serve.service import DEFAULT_WATCHDOG_S, MAX_WATCHDOG_S, MIN_WATCHDOG_S

# A server with no model yet lets a request generate until its slot is full unless --max-tokens says less.
UNLIMITED_TOKENS = 1 << 20


def serve(
    model: Annotated[str, typer.Option("--model", "-m", help="A .gguf file, a catalog name (deepseek-r1-1.5b[:Q4_K_S]) or owner/repo:QUANT: loaded at the start, the default model. Without -m: every downloaded model, loaded when a request asks for it.")] = "",
    host: Annotated[str, typer.Option("--host", help="Address to listen on; anything but loopback needs --api-key or --insecure.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", min=0, max=65535, help="Port to listen on (0: any free port).")] = 8080,
    api_key: Annotated[str | None, typer.Option("--api-key", envvar="EDGELLM_API_KEY", help="Require 'Authorization: Bearer KEY' (or set EDGELLM_API_KEY).")] = None,
    api_key_file: Annotated[str | None, typer.Option("--api-key-file", help="Read the API key from the first line of FILE (mode 600), so it is not on the command line.")] = None,
    insecure: Annotated[bool, typer.Option("--insecure", help="Allow a non-loopback --host without an API key.")] = False,
    allow_pull: Annotated[bool, typer.Option("--allow-pull", help="Let clients pull and delete models (Ollama's /api/pull, /api/delete) on a non-loopback --host without an API key (on loopback, or with a key, they may anyway), and start with no model downloaded yet.")] = False,
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
    keep_alive: Annotated[str | None, typer.Option("--keep-alive", help="How long a model loaded on request stays loaded once idle (5m, 1h, 300 seconds, -1: until room is needed, 0: free it after each request); a request's keep_alive overrides it. Default: --idle-unload's, else 5m (-m's model: as --idle-unload says, unless --keep-alive is given).")] = None,
    rpc: RpcOpt = None,
) -> None:
    """Serve a model over an OpenAI-compatible HTTP API, and Ollama's API on the same port.

    OpenAI: GET /v1/models, POST /v1/chat/completions, POST /v1/completions (Open WebUI, the openai client, curl); reasoning goes to `reasoning_content`. Ollama: GET /api/tags, /api/ps, /api/version, POST /api/chat, /api/generate, /api/show, /api/pull, DELETE /api/delete (Home Assistant's Ollama integration, Open WebUI's Ollama connection, LangChain's ChatOllama, Continue); the model is listed as NAME:latest. Also GET /health, /metrics, /slots. Several requests generate at once (--parallel slots, continuous batching); more wait in the queue.

    Without -m it serves every model in the Hugging Face cache (edgellm pull NAME puts them there), under its catalog name, owner/repo:QUANT and its Ollama library name (qwen2.5:0.5b, llama3.2): a request loads the model it names; models stay loaded together as far as the memory budget holds them (the least recently used idle one is unloaded to make room), each for --keep-alive once idle. With -m, that model is loaded at the start and is the default.

Clients may pull models (downloaded with edgellm's own code, the quant picked for this board) and delete them: on loopback, with --api-key (the key is needed), or, on a network address without a key, only with --allow-pull. With nothing downloaded yet and --allow-pull, serve starts empty and clients pull their models.

    Example: edgellm serve -m model.gguf --port 8080

    Example, every downloaded model: edgellm serve --keep-alive 10m

    Example, on Ollama's port for clients that assume it: edgellm serve -m model.gguf --port 11434

    Example, for Home Assistant on the LAN, which pulls its models: edgellm serve --host 0.0.0.0 --port 11434 --insecure --allow-pull
    """
    from edgellm import serve as server
    from edgellm.device.profiles import this_device
    from edgellm.device.sysfs import format_cpu_list
    from edgellm.loader import open_model, prepare
    from edgellm.plan.planner import memory_budget
    from edgellm.serve.ollama_translate import ollama_name
    from edgellm.serve.sdnotify import Notifier
    from edgellm.units import format_size, parse_duration

    if truncate not in ("oldest", "error"):
        raise UsageError(f"--truncate must be oldest or error, not '{truncate}'")
    if api_key_file is not None:
        if api_key:
            raise UsageError("use either --api-key (or EDGELLM_API_KEY) or --api-key-file, not both")
        api_key = server.read_api_key_file(api_key_file)
    idle_unload_s = parse_duration(idle_unload, "--idle-unload") if idle_unload is not None else None
    keep_alive_s = _keep_alive(keep_alive, idle_unload_s)
    server.check_bind(host, api_key, insecure)
    plan_options = options.plan_options(profile, ctx, mem_budget, threads, rpc, parallel=parallel, think_budget=think_budget)
    prepared = prepare(model, plan_options, loading=True) if model else None
    library = server.Library(plan_options)
    candidates = library.candidates(skip=prepared.model.path if prepared else None)
    pulls = server.pulls_allowed(host, api_key, allow_pull)
    if prepared is None and not candidates and not (pulls and allow_pull):  # empty: only when asked to be
        raise UsageError("no model: pass -m FILE.gguf, or download models to serve them all",
                         hint="edgellm serve -m ~/models/model.gguf  (or: edgellm pull qwen2.5-0.5b, then edgellm serve; "
                              "or --allow-pull: start empty, clients pull models)")
    if prepared is not None:
        device, chosen_profile = prepared.device, prepared.profile
    else:
        device, chosen_profile, _ = this_device(plan_options.sysroot, plan_options.profile)
    budget, _ = memory_budget(device, chosen_profile, plan_options.mem_budget)
    plans = [c.plan for c, _ in candidates] + ([prepared.plan] if prepared else [])
    largest_slot = max((p.n_ctx_per_slot for p in plans), default=None)
    if max_tokens is not None and largest_slot is not None and max_tokens > largest_slot:
        raise UsageError(f"--max-tokens {max_tokens} is larger than a slot's context ({largest_slot} tokens)", hint="raise --ctx, or lower --max-tokens")
    sock = server.listen(host, port)
    notifier = Notifier()
    engine = loaded = None
    model_id = ""
    if prepared is not None:
        plan_ = prepared.plan
        model_id = alias or (prepared.model.path.stem if prepared.model.path else model)
        slots = f", {plan_.parallel} slots of {plan_.n_ctx_per_slot} tokens" if plan_.parallel > 1 else ""
        ui.info(f"loading {model_id}: context {plan_.n_ctx}{slots}, {plan_.threads} threads on cores {format_cpu_list(plan_.cores)} ({prepared.profile.name})")
        if notifier.enabled and not notifier.status(f"loading {model_id}"):
            ui.warn(f"{notifier.failed}: systemd will not hear that the server is ready")
        loaded = open_model(prepared, plan_options, sequences=plan_.parallel)
        engine = loaded.engine
        server.warm_up(engine)
    # The largest max_tokens a request may ask for: -m's slot; without -m the largest slot (a
    # request's own slot still ends it); no model yet: --max-tokens, else until its slot is full.
    limit = min(max_tokens or prepared.plan.n_ctx_per_slot, prepared.plan.n_ctx_per_slot) if prepared else \
        max_tokens or largest_slot or UNLIMITED_TOKENS
    config = server.ServerConfig(model_id=model_id, api_key=api_key, max_tokens_limit=limit,
                                 queue_size=queue, allowed_hosts=server.allowed_hosts(host, allow_host or []), cors_origins=list(cors or []),
                                 truncate=truncate, idle_unload_s=idle_unload_s, allow_pull=pulls,
                                 **options.serve_thinking(chosen_profile, plan_options.think_budget, think_message))
    url = server.url_of(sock)
    served = f"{model_id} at {url}/v1 (OpenAI API) and {url}/api (Ollama's API, as {ollama_name(model_id)})" if model_id else \
        f"{len(candidates)} models at {url}/v1 (OpenAI API) and {url}/api (Ollama's API), each loaded when asked for"
    if not model_id and not candidates:
        ui.info("no model downloaded yet: clients pull them (Ollama's /api/pull), or edgellm pull NAME on the board")
    more = f"; also {len(candidates)} more models, loaded when asked for" if model_id and candidates else ""
    budget_note = f"; together within {format_size(budget)}" if budget is not None and candidates else ""
    ui.info(f"serving {served}{more}{budget_note}{'; API key required' if api_key else ''}; Ctrl-C stops")
    if candidates:
        ui.info("models: " + ", ".join(c.model_id for c, _ in candidates))
    if notifier.enabled:
        watchdog = f", watchdog every {notifier.watchdog_s:g}s" if notifier.watchdog_s else ""
        ui.info(f"systemd: telling it when ready{watchdog}")
    try:
        server.serve(engine, config, sock, notifier=notifier, load_engine=loaded.reload if loaded else None,
                     default_aliases=_default_aliases(model, prepared.model.path) if prepared else [],
                     candidates=[c for c, _ in candidates], budget=budget, keep_alive_s=keep_alive_s,
                     keep_alive_given=keep_alive is not None, library=library)
    finally:
        if engine is not None:
            engine.close()
        sock.close()
        notifier.close()
    ui.info("stopped")


def _keep_alive(value: str | None, idle_unload_s: float | None) -> float | None:
    """--keep-alive in seconds (None: for ever); without it --idle-unload's, else 5 minutes."""
    from edgellm.serve.errors import APIError
    from edgellm.serve.ollama_translate import parse_keep_alive

    if value is None:
        return idle_unload_s if idle_unload_s is not None else 300.0
    try:
        seconds = parse_keep_alive(value, 300.0)
    except APIError as exc:
        raise UsageError(f"--keep-alive: {exc.message}") from None
    return None if seconds == float("inf") else seconds


def _default_aliases(model: str, path: Path | None) -> list[str]:
    """-m's other names: what -m said, and, for a downloaded model, its names as without -m."""
    from edgellm.serve import names_of
    from edgellm.store.cache import list_downloaded

    names = [model]
    if path is not None:
        for item in list_downloaded():
            if item.path.resolve() == path.resolve():
                names += [item.name, *names_of(item)]
    return names


service_app = typer.Typer(
    help="Run `edgellm serve` as a systemd service: started at boot, restarted when it hangs or dies.\n\n"
    "Example: sudo edgellm service install -m deepseek-r1-1.5b --host 0.0.0.0",
    no_args_is_help=True,
)


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

    Without --user it is a system service, run by a dedicated edgellm user with its models in /var/lib/edgellm (needs root). Start returns once the model is loaded and answers.

    Example: sudo edgellm service install -m deepseek-r1-1.5b --host 0.0.0.0 --port 8080
    """
    from edgellm.serve import service

    done = service.install(model, list(ctx.args), user_mode=user, key_file=Path(api_key_file) if api_key_file else None,
                           watchdog_s=watchdog, say=ui.info, notices=terminal_notices())
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
