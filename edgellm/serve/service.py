"""`edgellm service`: `edgellm serve` as a systemd service that starts at boot and is restarted
when it hangs or dies.

The unit is `Type=notify`: systemd counts the service as started once serve says READY=1 (the
model loaded and a warm-up decode ran), kills and restarts it when the WATCHDOG=1 pings stop, and
shows serve's STATUS= line in `systemctl status` (edgellm.serve.sdnotify, edgellm.serve.lifecycle).

A system service runs as its own `edgellm` user, with its models under /var/lib/edgellm and the
API key handed over by systemd's LoadCredential= from a root-only file; a `--user` service runs as
you, with your models. `render_unit` is pure; `install` and the rest drive systemctl.
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import subprocess
import sys
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from edgellm import __version__
from edgellm.errors import EdgeLLMError, UsageError
from edgellm.loader import QUIET, Notices
from edgellm.paths import user_api_key_file

UNIT_NAME = "edgellm.service"
SERVICE_USER = "edgellm"
STATE_DIR = Path("/var/lib/edgellm")
SYSTEM_UNIT_DIR = Path("/etc/systemd/system")
SYSTEM_KEY_FILE = Path("/etc/edgellm/api-key")
CREDENTIAL = "api-key"
# A decode step on a Pi takes seconds, a 512-token prompt batch of a 7B model about a minute;
# serve pings while its loop came round within this (edgellm.serve.lifecycle.heartbeat_fresh).
# Loading from an SD card is slow, hence the start timeout.
DEFAULT_WATCHDOG_S = 120
# systemd reads WatchdogSec= as microseconds in 64 bits and ignores a value it cannot hold (it
# parses up to 18446744073708 s in systemd 252; more is "Failed to parse sec value, ignoring", and
# the service runs with no watchdog). Below 5 s serve's pings come too close to the limit; an hour
# is already longer than any decode step, and a hung server should not wait longer to restart.
MIN_WATCHDOG_S = 5
MAX_WATCHDOG_S = 3600
START_TIMEOUT_S = 600
# serve options a unit may not carry: the key comes from a file, never the command line.
FORBIDDEN_SERVE_OPTIONS = {"--api-key": "the unit reads the key from a file: pass --api-key-file FILE, or let install make one",
                           "-m": "give the model to `edgellm service` itself: -m MODEL", "--model": "give the model as -m MODEL"}


@dataclass
class UnitSpec:
    """What a unit needs; `render_unit` turns it into the file's text."""

    command: list[str]  # the edgellm executable (absolute), as the service runs it
    model_path: Path
    serve_args: list[str] = field(default_factory=list)
    user_mode: bool = False
    key_file: Path | None = None  # system: LoadCredential's source; user: passed as is
    watchdog_s: int = DEFAULT_WATCHDOG_S
    description: str = ""


def unit_path(user_mode: bool) -> Path:
    if user_mode:
        base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
        return base / "systemd" / "user" / UNIT_NAME
    return SYSTEM_UNIT_DIR / UNIT_NAME


def edgellm_command() -> list[str]:
    """The absolute path of this installation's `edgellm` (the venv's), else `python -m edgellm`."""
    script = Path(sys.executable).parent / "edgellm"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "edgellm"]


# Every value edgellm writes into the unit passes here. systemd reads a unit as UTF-8 lines that
# end at LF, CR or NUL (systemd.syntax(7)): a control character in a value would end the line and
# let the rest be read as a directive of its own. Such values are refused, never escaped.
_CONTROL_NAMES = {"\n": "a line feed", "\r": "a carriage return", "\x00": "a NUL byte", "\t": "a tab"}


def _shown(value: str, at: int, width: int = 100) -> str:
    """`value` for a one-line message: quoted, control characters escaped, a long one cut to the
    part around its character at `at`."""
    start = max(0, min(at - width // 2, len(value) - width))
    part = value[start:start + width]
    return repr(("..." if start else "") + part + ("..." if start + width < len(value) else ""))


def check_unit_value(option: str, value: str) -> str:
    """`value` if a unit can carry it whole: no control characters, nothing that is not UTF-8."""
    for at, char in enumerate(value):
        category = unicodedata.category(char)
        if category == "Cs":  # a byte that is not UTF-8, as os.fsdecode keeps it
            raise UsageError(f"{option} {_shown(value, at)} is not valid UTF-8, which a systemd unit cannot carry",
                             hint="rename the file or directory")
        if category == "Cc":
            name = _CONTROL_NAMES.get(char, "a control character")
            raise UsageError(f"{option} {_shown(value, at)} holds {name} (U+{ord(char):04X}), which a systemd unit cannot carry",
                             hint="rename the file or directory, or give the value without it")
    return value


def check_line_end(option: str, value: str) -> str:
    """`value` if it can end a unit line: systemd drops whitespace there and joins a line that ends
    in a backslash with the next one (which would swallow the directive that follows)."""
    if value != value.rstrip() or value.endswith("\\"):
        raise UsageError(f"{option} {_shown(value, len(value) - 1)} ends in whitespace or a backslash, which systemd would not read back",
                         hint="rename the file or directory")
    return value


def check_watchdog(seconds: int) -> int:
    """`seconds` if WatchdogSec= may be that (MIN_WATCHDOG_S to MAX_WATCHDOG_S)."""
    if not MIN_WATCHDOG_S <= seconds <= MAX_WATCHDOG_S:
        raise UsageError(f"--watchdog {seconds}: expected {MIN_WATCHDOG_S} to {MAX_WATCHDOG_S} seconds",
                         hint=f"the default is {DEFAULT_WATCHDOG_S}; a decode step must fit in it")
    return seconds


def _serve_option(args: Sequence[str], index: int) -> tuple[str, str]:
    """(the option, its value) that `args[index]` holds or belongs to, for a message:
    ('--alias', 'x') for `--alias x` and for `--alias=x`."""
    arg = args[index]
    name, value = (arg.split("=", 1) if "=" in arg else (arg, "")) if arg.startswith("-") else ("", arg)
    if not name and index and args[index - 1].startswith("-"):
        name = args[index - 1]
    if not name or not name.isprintable():
        return "a serve option", arg
    return name, value if value or "=" in arg else arg


def check_serve_args(args: Sequence[str]) -> list[str]:
    """The serve options to put in the unit, refusing those it must not carry."""
    for index, arg in enumerate(args):
        name = arg.split("=", 1)[0]
        if name in FORBIDDEN_SERVE_OPTIONS:
            raise UsageError(f"{name}: {FORBIDDEN_SERVE_OPTIONS[name]}")
        check_unit_value(*_serve_option(args, index))
    return list(args)


def option_value(args: Sequence[str], name: str, default: str) -> str:
    """The value of `--name VALUE` or `--name=VALUE` among pass-through serve options."""
    for index, arg in enumerate(args):
        if arg == name and index + 1 < len(args):
            return args[index + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return default


def specifier_escape(text: str) -> str:
    """`text` for a setting where systemd expands %-specifiers (Description=, ExecStart=,
    LoadCredential=, ...: systemd.unit(5), "Specifiers"): a literal % is %%."""
    return text.replace("%", "%%")


def systemd_quote(arg: str) -> str:
    """One ExecStart= word that systemd reads back as `arg` (systemd.service(5), "Command lines"):
    a literal % is %% (specifiers) and a literal $ is $$ (variables); a word with anything but
    safe characters is double-quoted, with \\ and \" escaped inside (C escapes are expanded there).
    Control characters cannot be carried at all: check_unit_value refuses them first."""
    text = specifier_escape(arg).replace("$", "$$")
    if text and re.fullmatch(r"[A-Za-z0-9_@%+=:,./$-]+", text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


# The key's path inside the service, written as is: systemd expands the variable when it starts serve.
CREDENTIAL_ARG = f"${{CREDENTIALS_DIRECTORY}}/{CREDENTIAL}"


def exec_start(spec: UnitSpec) -> str:
    words = [systemd_quote(word) for word in (*spec.command, "serve", "-m", str(spec.model_path), *spec.serve_args)]
    if spec.key_file is not None:
        words += ["--api-key-file", CREDENTIAL_ARG if not spec.user_mode else systemd_quote(str(spec.key_file))]
    return " ".join(words)


def check_spec(spec: UnitSpec) -> UnitSpec:
    """Every value of `spec` that reaches the unit, checked (the options named as people typed them)."""
    for word in spec.command:
        check_unit_value("the edgellm executable", word)
    check_unit_value("-m", str(spec.model_path))
    check_serve_args(spec.serve_args)
    if spec.key_file is not None:
        check_unit_value("--api-key-file", str(spec.key_file))
        if not spec.user_mode:  # it ends the LoadCredential= line
            check_line_end("--api-key-file", str(spec.key_file))
    if spec.description:
        check_line_end("the description", check_unit_value("the description", spec.description))
    check_watchdog(spec.watchdog_s)
    return spec


# Seccomp filters, in system and user units alike: serve (Python, llama.cpp, its CPU pinning)
# runs with the system-service set of calls, checked under a real user manager.
SECCOMP_HARDENING = (
    "SystemCallFilter=@system-service",
    "SystemCallErrorNumber=EPERM",
    "SystemCallArchitectures=native",
    "LockPersonality=yes",
    "RestrictRealtime=yes",
)


def render_unit(spec: UnitSpec) -> str:
    """The unit file's text; every value in it is checked (check_spec) and escaped for its setting."""
    check_spec(spec)
    about = spec.description or f"edgellm: OpenAI-compatible LLM server ({spec.model_path.name})"
    lines = [
        f"# Written by `edgellm service install` (edgellm {__version__}). `edgellm service uninstall` removes it.",
        "[Unit]",
        f"Description={specifier_escape(about)}",
        "After=network-online.target",
        "Wants=network-online.target",
        # At most 5 restarts in 10 minutes: a model that cannot load stops retrying.
        "StartLimitIntervalSec=600",
        "StartLimitBurst=5",
        "",
        "[Service]",
        "Type=notify",
        "NotifyAccess=main",
        f"ExecStart={exec_start(spec)}",
        f"WatchdogSec={spec.watchdog_s}",
        f"TimeoutStartSec={START_TIMEOUT_S}",
        "TimeoutStopSec=30",
        "Restart=on-failure",
        "RestartSec=5",
        # No download at start: the model is a file; profiles and caches stay where install put them.
        "Environment=HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1",
    ]
    if not spec.user_mode:
        lines += [
            f"User={SERVICE_USER}",
            f"Group={SERVICE_USER}",
            f"Environment=EDGELLM_HOME={STATE_DIR} HF_HOME={STATE_DIR}/huggingface",
            f"StateDirectory={STATE_DIR.name}",
            "StateDirectoryMode=0750",
        ]
        if spec.key_file is not None:
            lines.append(f"LoadCredential={CREDENTIAL}:{specifier_escape(str(spec.key_file))}")
        lines += [
            "# Hardening: the service reads the system and the model, writes only its state directory.",
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "ProtectHome=read-only",
            "PrivateTmp=yes",
            "PrivateDevices=yes",
            "ProtectKernelTunables=yes",
            "ProtectKernelModules=yes",
            "ProtectKernelLogs=yes",
            "ProtectControlGroups=yes",
            "ProtectClock=yes",
            "ProtectHostname=yes",
            "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
            "RestrictNamespaces=yes",
            "RestrictSUIDSGID=yes",
            "CapabilityBoundingSet=",
            *SECCOMP_HARDENING,
            "UMask=0077",
        ]
    else:
        # User managers cannot set up namespaces (ProtectSystem=, PrivateTmp=, ...) without user
        # namespaces, which many board kernels lack (the unit would fail with status 218);
        # seccomp needs none, only NoNewPrivileges.
        lines += ["NoNewPrivileges=yes", *SECCOMP_HARDENING, "UMask=0077"]
    lines += [
        "StandardOutput=journal",
        "StandardError=journal",
        "SyslogIdentifier=edgellm",
        "",
        "[Install]",
        f"WantedBy={'default.target' if spec.user_mode else 'multi-user.target'}",
        "",
    ]
    return "\n".join(lines)


# --- driving systemd ------------------------------------------------------------------------------

Runner = Callable[[list[str]], "subprocess.CompletedProcess[str]"]


def run_command(command: list[str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=START_TIMEOUT_S + 60, check=False)
    except FileNotFoundError:
        raise EdgeLLMError(f"{command[0]} not found: this needs systemd") from None
    except subprocess.TimeoutExpired:
        raise EdgeLLMError(f"`{' '.join(command)}` did not finish in {START_TIMEOUT_S + 60}s") from None


def systemctl(user_mode: bool, *args: str) -> list[str]:
    return ["systemctl", *(["--user"] if user_mode else []), *args]


def require_systemd(user_mode: bool, runner: Runner = run_command) -> None:
    if shutil.which("systemctl") is None:
        raise UsageError("systemctl is not installed: edgellm service needs systemd",
                         hint="run `edgellm service unit ...` and hand the unit to your init system")
    probe = runner(systemctl(user_mode, "is-system-running"))
    state = probe.stdout.strip()
    if state in ("", "offline") or "Failed to connect" in probe.stderr:
        where = "your user's systemd (is a login session or lingering on?)" if user_mode else "systemd"
        raise UsageError(f"{where} is not running here ({state or probe.stderr.strip()[:80] or 'no answer'})",
                         hint="edgellm service unit ... prints the unit for your own setup")


def require_root(user_mode: bool) -> None:
    if not user_mode and os.geteuid() != 0:
        raise UsageError("a system service needs root to install",
                         hint=f"sudo {' '.join(edgellm_command())} service install ..., or add --user for your own service")


def ensure_service_user(runner: Runner = run_command) -> None:
    try:
        pwd.getpwnam(SERVICE_USER)
        return
    except KeyError:
        pass
    nologin = next((p for p in ("/usr/sbin/nologin", "/sbin/nologin", "/bin/false") if Path(p).exists()), "/bin/false")
    done = runner(["useradd", "--system", "--user-group", "--home-dir", str(STATE_DIR), "--no-create-home",
                   "--shell", nologin, SERVICE_USER])
    if done.returncode != 0:
        raise EdgeLLMError(f"could not create the {SERVICE_USER} user: {done.stderr.strip()[:200]}")


def service_user_can(test: str, path: Path, runner: Runner = run_command) -> bool:
    """Whether the service user can read (-r) or run (-x) `path`, tested as that user."""
    return runner(["runuser", "-u", SERVICE_USER, "--", "test", test, str(path)]).returncode == 0


def write_key_file(path: Path) -> bool:
    """A new random key in `path` (0600, its directory 0700), unless one is there. True if made."""
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(f"sk-edgellm-{secrets.token_hex(16)}\n")
    return True


def write_unit(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    temporary.chmod(0o644)
    temporary.replace(path)


def journal_filter(user_mode: bool) -> list[str]:
    """The service's lines: by unit for the system one; for a user one by the unit's
    SyslogIdentifier and the user's uid, in whichever journal files the user may read (its own,
    or the system's for the systemd-journal group; user-unit metadata is missing where the user
    manager's cgroup is not delegated, as in containers)."""
    return [f"_UID={os.getuid()}", "-t", "edgellm"] if user_mode else ["-u", UNIT_NAME]


def journal_tail(user_mode: bool, lines: int = 15, runner: Runner = run_command) -> str:
    return runner(["journalctl", *journal_filter(user_mode), "-n", str(lines), "--no-pager", "-o", "cat"]).stdout.strip()


def start(user_mode: bool, runner: Runner = run_command) -> None:
    """daemon-reload, enable, (re)start: with Type=notify, start returns once serve is READY."""
    for args in (("daemon-reload",), ("enable", UNIT_NAME), ("restart", UNIT_NAME)):
        done = runner(systemctl(user_mode, *args))
        if done.returncode != 0:
            tail = journal_tail(user_mode, runner=runner)
            detail = f"\n{tail}" if tail else ""
            raise EdgeLLMError(f"systemctl {' '.join(args)} failed: {done.stderr.strip()[:300] or done.returncode}{detail}",
                               hint=f"edgellm service logs{' --user' if user_mode else ''}")


def stop_and_remove(user_mode: bool, runner: Runner = run_command) -> Path | None:
    path = unit_path(user_mode)
    if not path.exists():
        return None
    runner(systemctl(user_mode, "disable", "--now", UNIT_NAME))
    path.unlink()
    runner(systemctl(user_mode, "daemon-reload"))
    return path


# --- install, as `edgellm service install` runs it ----------------------------------------------


@dataclass
class Installed:
    unit: Path
    key_file: Path | None
    key_created: bool
    url: str
    model_path: Path


def service_url(serve_args: Sequence[str]) -> str:
    host = option_value(serve_args, "--host", "127.0.0.1")
    port = option_value(serve_args, "--port", option_value(serve_args, "-p", "8080"))
    return f"http://{'[' + host + ']' if ':' in host else host}:{port}/v1"


def model_file(spec: str, *, download: bool, state_dir: Path | None = None, notices: Notices = QUIET) -> Path:
    """The absolute .gguf the unit names: a file given, or a hub model pulled (into the system
    service's own cache when `state_dir` is given, so its user reads it without a home)."""
    from edgellm.loader import resolve_model  # noqa: PLC0415

    check_unit_value("-m", spec)
    saved = {name: os.environ.get(name) for name in ("HF_HOME", "EDGELLM_HOME")}
    try:
        if state_dir is not None:
            os.environ["HF_HOME"] = str(state_dir / "huggingface")
            os.environ["EDGELLM_HOME"] = str(state_dir)
        info = resolve_model(spec, yes=True, download=download, notices=notices)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    if info.path is None:
        raise UsageError(f"{spec} is not downloaded", hint=f"edgellm pull {spec}, or give a .gguf file with -m")
    return Path(info.path).absolute()


def build_spec(model_path: Path, serve_args: Sequence[str], *, user_mode: bool, key_file: Path | None,
               watchdog_s: int = DEFAULT_WATCHDOG_S) -> UnitSpec:
    return UnitSpec(command=edgellm_command(), model_path=model_path, serve_args=check_serve_args(serve_args),
                    user_mode=user_mode, key_file=key_file, watchdog_s=watchdog_s)


def key_file_path(given: str | Path) -> Path:
    """The key file as the unit names it: absolute, and with no `..` (LoadCredential= ignores a
    path that is not normalized, and serve would then start without its key)."""
    path = Path(check_unit_value("--api-key-file", str(given))).absolute()
    return path.resolve() if ".." in path.parts else path


def default_key_file(user_mode: bool) -> Path:
    return user_api_key_file() if user_mode else SYSTEM_KEY_FILE


def install(model: str, serve_args: Sequence[str], *, user_mode: bool, key_file: Path | None = None,
            watchdog_s: int = DEFAULT_WATCHDOG_S, runner: Runner = run_command,
            say: Callable[[str], None] = lambda _: None, notices: Notices = QUIET) -> Installed:
    """Write the unit and start it: a system service as the `edgellm` user, or a user service."""
    # What reaches the unit is checked before anything is done (render_unit checks it all again).
    check_watchdog(watchdog_s)
    check_unit_value("-m", model)
    check_serve_args(serve_args)
    if key_file is not None:
        key_file = key_file_path(key_file)
    require_root(user_mode)
    require_systemd(user_mode, runner)
    if not user_mode:
        ensure_service_user(runner)
        STATE_DIR.mkdir(mode=0o750, parents=True, exist_ok=True)
    say(f"model: {model}")
    path = model_file(model, download=True, state_dir=None if user_mode else STATE_DIR, notices=notices)
    spec = build_spec(path, serve_args, user_mode=user_mode, key_file=None, watchdog_s=watchdog_s)
    if not user_mode:
        _chown_tree(STATE_DIR)
        for what, test, target in (("read the model", "-r", path), ("run edgellm", "-x", Path(spec.command[0]))):
            if not service_user_can(test, target, runner):
                raise UsageError(f"the {SERVICE_USER} user cannot {what}: {target}",
                                 hint="put it where other users can read it (e.g. /opt/edgellm, /var/lib/edgellm), or add --user")
    created = False
    if key_file is None:
        key_file = default_key_file(user_mode)
        created = write_key_file(key_file)
    else:
        from edgellm.serve.startup import read_api_key_file  # noqa: PLC0415  (the same checks serve makes)

        read_api_key_file(str(key_file))
    spec.key_file = key_file
    unit = unit_path(user_mode)
    write_unit(unit, render_unit(spec))
    say(f"wrote {unit}; starting (systemd waits until the model is loaded and answers)")
    start(user_mode, runner)
    return Installed(unit=unit, key_file=key_file, key_created=created, url=service_url(serve_args), model_path=path)


def _chown_tree(root: Path) -> None:
    entry = pwd.getpwnam(SERVICE_USER)
    for directory, _, files in os.walk(root):
        os.chown(directory, entry.pw_uid, entry.pw_gid)
        for name in files:
            os.chown(os.path.join(directory, name), entry.pw_uid, entry.pw_gid, follow_symlinks=False)


def status(user_mode: bool, runner: Runner = run_command) -> subprocess.CompletedProcess[str]:
    if not unit_path(user_mode).exists():
        raise UsageError(f"{UNIT_NAME} is not installed{' for this user' if user_mode else ''}",
                         hint=f"edgellm service install{' --user' if user_mode else ''} -m MODEL")
    return runner(systemctl(user_mode, "status", UNIT_NAME, "--no-pager", "--lines=5"))


def logs_command(user_mode: bool, lines: int, follow: bool) -> list[str]:
    return ["journalctl", *journal_filter(user_mode), "-n", str(lines), "--no-pager", *(["-f"] if follow else [])]
