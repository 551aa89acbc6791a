"""`edgellm service`: the unit it writes (checked by systemd's own `systemd-analyze verify`), the
quoting of ExecStart, and install's steps against a scripted systemctl (a fake is fine for the
order of calls; the real thing is exercised by hand against a running user manager, see README)."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest
from conftest import run_cli

from edgellm.errors import EdgeLLMError, UsageError
from edgellm.serve import service


def _analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("systemd-analyze is missing: scripts/install.sh --test installs Debian's systemd package")
        pytest.skip("systemd-analyze is not installed")
    return found


def _verify(unit_text: str, directory: Path, *, user: bool) -> subprocess.CompletedProcess[str]:
    path = directory / service.UNIT_NAME
    path.write_text(unit_text)
    command = [_analyze(), *(["--user"] if user else []), "verify", str(path)]
    runtime = directory / "runtime"  # a user manager's runtime directory, which verify --user looks up
    runtime.mkdir(mode=0o700, exist_ok=True)
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, "SYSTEMD_LOG_LEVEL": "notice", "XDG_RUNTIME_DIR": str(runtime)})


def _spec(tiny: Path, *serve_args: str, user: bool = False, key: Path | None = Path("/etc/edgellm/api-key")) -> service.UnitSpec:
    return service.build_spec(tiny, list(serve_args), user_mode=user, key_file=key)


def test_the_system_unit_passes_systemd_analyze_verify(tiny_q4km: Path, tmp_path: Path) -> None:
    text = service.render_unit(_spec(tiny_q4km, "--host", "0.0.0.0", "--port", "8081"))
    checked = _verify(text, tmp_path, user=False)
    assert checked.returncode == 0, checked.stderr
    assert checked.stderr.strip() == "", checked.stderr  # not even a warning
    for line in ("Type=notify", "WatchdogSec=120", "Restart=on-failure", "StartLimitBurst=5", "User=edgellm",
                 "NoNewPrivileges=yes", "ProtectSystem=strict", "PrivateTmp=yes", "StateDirectory=edgellm",
                 "LoadCredential=api-key:/etc/edgellm/api-key", "StandardOutput=journal", "WantedBy=multi-user.target",
                 "SystemCallFilter=@system-service", "CapabilityBoundingSet="):
        assert line in text.splitlines(), line
    exec_line = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    assert exec_line.startswith(f"ExecStart={service.edgellm_command()[0]} serve -m {tiny_q4km}")
    assert exec_line.endswith("--host 0.0.0.0 --port 8081 --api-key-file ${CREDENTIALS_DIRECTORY}/api-key")


def test_the_user_unit_passes_verify_and_keeps_to_what_user_managers_can_do(tiny_q4km: Path, tmp_path: Path) -> None:
    key = tmp_path / "api-key"
    text = service.render_unit(_spec(tiny_q4km, user=True, key=key))
    checked = _verify(text, tmp_path, user=True)
    assert checked.returncode == 0 and checked.stderr.strip() == "", checked.stderr  # verify only warns on bad lines
    assert "User=" not in text and "LoadCredential" not in text and "ProtectSystem" not in text
    assert "SystemCallFilter=@system-service" in text and "NoNewPrivileges=yes" in text  # seccomp needs no namespaces
    assert f"--api-key-file {key}" in text and "WantedBy=default.target" in text and "Type=notify" in text


@pytest.mark.parametrize("arg, word", [
    ("plain-arg", "plain-arg"),
    ("two words", '"two words"'),
    ("100%", "100%%"),  # systemd's specifier
    ("$HOME", "$$HOME"),  # systemd's variable expansion
    ('say "hi"', '"say \\"hi\\""'),
    ("back\\slash", '"back\\\\slash"'),
    ("${CREDENTIALS_DIRECTORY}/api-key", "\"$${CREDENTIALS_DIRECTORY}/api-key\""),  # a word of yours is never expanded
    ("", '""'),
    (";", '";"'),  # a bare ; would end the command
])
def test_exec_start_words_are_quoted_for_systemd(arg: str, word: str) -> None:
    assert service.systemd_quote(arg) == word


def test_odd_serve_options_still_make_a_valid_unit(tiny_q4km: Path, tmp_path: Path) -> None:
    text = service.render_unit(_spec(tiny_q4km, "--think-message", "it's 100% $done, \"ok\"", "--alias", "my model"))
    checked = _verify(text, tmp_path, user=False)
    assert checked.returncode == 0 and checked.stderr.strip() == "", checked.stderr


@pytest.mark.parametrize("args, message", [
    (["--api-key", "sk-1"], "reads the key from a file"),
    (["--api-key=sk-1"], "reads the key from a file"),
    (["-m", "other.gguf"], "give the model"),
    (["--alias", "a\nb"], "--alias 'a\\nb' holds a line feed"),
    (["--alias", "a\rExecStartPre=/bin/sh"], "--alias 'a\\rExecStartPre=/bin/sh' holds a carriage return"),
    (["--alias=a\x00b"], "--alias 'a\\x00b' holds a NUL byte"),
    (["--alias", "tab\there"], "holds a tab"),
    (["--alias", "bell\x07"], "holds a control character (U+0007)"),
    (["--alias", "next\x85line"], "holds a control character (U+0085)"),  # C1: NEL
    (["--alias", "bad\udcffbyte"], "is not valid UTF-8"),  # how os.fsdecode keeps a byte that is not UTF-8
])
def test_options_a_unit_must_not_carry_are_refused(args: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=re.escape(message)) as refused:
        service.check_serve_args(args)
    assert "\n" not in refused.value.message and refused.value.message.isprintable()  # one line, shown safely


def test_the_url_install_reports_follows_the_serve_options() -> None:
    assert service.service_url([]) == "http://127.0.0.1:8080/v1"
    assert service.service_url(["--host", "0.0.0.0", "-p", "9000"]) == "http://0.0.0.0:9000/v1"
    assert service.service_url(["--host=::1", "--port=81"]) == "http://[::1]:81/v1"


class ScriptedSystemd:
    """systemctl and journalctl as install calls them: records every command, answers as told."""

    def __init__(self, failing: str | None = None, state: str = "running") -> None:
        self.calls: list[list[str]] = []
        self.failing = failing
        self.state = state

    def __call__(self, command: list[str]) -> subprocess.CompletedProcess[str]:
        self.calls.append(command)
        if command[-1] == "is-system-running":
            return subprocess.CompletedProcess(command, 0, self.state + "\n", "")
        if command[0] == "journalctl":
            return subprocess.CompletedProcess(command, 0, "error: the model file is not a GGUF\n", "")
        if self.failing and self.failing in command:
            return subprocess.CompletedProcess(command, 1, "", f"Job for edgellm.service failed ({self.failing}).")
        return subprocess.CompletedProcess(command, 0, "", "")


@pytest.fixture()
def user_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("EDGELLM_HOME", str(tmp_path / "config" / "edgellm"))
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    return tmp_path / "config"


def test_user_install_writes_the_unit_and_a_private_key_then_reloads_enables_and_starts(tiny_q4km: Path, user_config: Path) -> None:
    systemd = ScriptedSystemd()
    done = service.install(str(tiny_q4km), ["--port", "8099"], user_mode=True, runner=systemd)
    unit = user_config / "systemd" / "user" / "edgellm.service"
    assert done.unit == unit and done.url == "http://127.0.0.1:8099/v1" and done.key_created
    assert [c[2:] for c in systemd.calls if c[0] == "systemctl"] == [
        ["is-system-running"], ["daemon-reload"], ["enable", "edgellm.service"], ["restart", "edgellm.service"]]
    assert all(c[:2] == ["systemctl", "--user"] for c in systemd.calls)
    key = user_config / "edgellm" / "api-key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and key.read_text().startswith("sk-edgellm-")
    assert f"--port 8099 --api-key-file {key}" in unit.read_text()
    # Installing again keeps the key: clients configured with it go on working.
    before = key.read_text()
    again = service.install(str(tiny_q4km), [], user_mode=True, runner=ScriptedSystemd())
    assert not again.key_created and key.read_text() == before


def test_a_start_that_fails_says_why_with_the_journal_and_a_hint(tiny_q4km: Path, user_config: Path) -> None:
    with pytest.raises(EdgeLLMError) as failed:
        service.install(str(tiny_q4km), [], user_mode=True, runner=ScriptedSystemd(failing="restart"))
    assert "systemctl restart edgellm.service failed" in failed.value.message
    assert "the model file is not a GGUF" in failed.value.message and "service logs --user" in (failed.value.hint or "")


def test_no_running_systemd_is_a_clear_refusal(tiny_q4km: Path, user_config: Path) -> None:
    with pytest.raises(UsageError, match="not running here"):
        service.install(str(tiny_q4km), [], user_mode=True, runner=ScriptedSystemd(state="offline"))
    assert not (user_config / "systemd").exists()


def test_a_given_key_file_must_be_private(tiny_q4km: Path, user_config: Path, tmp_path: Path) -> None:
    key = tmp_path / "mine"
    key.write_text("sk-mine\n")
    key.chmod(0o644)
    with pytest.raises(UsageError, match="can be read by others"):
        service.install(str(tiny_q4km), [], user_mode=True, key_file=key, runner=ScriptedSystemd())
    key.chmod(0o600)
    done = service.install(str(tiny_q4km), [], user_mode=True, key_file=key, runner=ScriptedSystemd())
    assert done.key_file == key and not done.key_created


def test_a_system_install_without_root_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(UsageError, match="needs root") as refused:
        service.require_root(user_mode=False)
    assert "--user" in (refused.value.hint or "")
    service.require_root(user_mode=True)  # a user service needs nothing


def test_service_commands_from_the_cli(tiny_q4km: Path, tmp_path: Path) -> None:
    printed = run_cli("service", "unit", "-m", str(tiny_q4km), "--port", "8123", "--user", XDG_CONFIG_HOME=str(tmp_path))
    assert printed.returncode == 0, printed.stderr
    assert b"--port 8123 --api-key-file" in printed.stdout and printed.stderr == b""
    refused = run_cli("service", "unit", "-m", str(tiny_q4km), "--api-key", "x")
    assert refused.returncode == 2 and b"reads the key from a file" in refused.stderr and b"Traceback" not in refused.stderr
    missing = run_cli("service", "status", "--user", XDG_CONFIG_HOME=str(tmp_path))
    assert missing.returncode == 2 and b"not installed" in missing.stderr
    for command in ("install", "unit", "status", "logs", "uninstall"):
        shown = run_cli("service", command, "--help")
        assert shown.returncode == 0 and b"Example: " in shown.stdout


def test_system_install_creates_the_user_checks_what_it_can_read_and_hands_the_key_by_credential(
        tiny_q4km: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The system paths moved below tmp_path; the service user is one that exists here (root), so
    # the ownership changes are real; useradd and runuser are answered by the script.
    monkeypatch.setattr(service, "SYSTEM_UNIT_DIR", tmp_path / "etc/systemd/system")
    monkeypatch.setattr(service, "SYSTEM_KEY_FILE", tmp_path / "etc/edgellm/api-key")
    monkeypatch.setattr(service, "STATE_DIR", tmp_path / "var/lib/edgellm")
    monkeypatch.setattr(service, "SERVICE_USER", "root")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    systemd = ScriptedSystemd()
    done = service.install(str(tiny_q4km), ["--host", "0.0.0.0"], user_mode=False, runner=systemd)
    text = done.unit.read_text()
    assert done.unit == tmp_path / "etc/systemd/system/edgellm.service"
    assert f"LoadCredential=api-key:{tmp_path}/etc/edgellm/api-key" in text and "User=root" in text
    assert "--host 0.0.0.0 --api-key-file ${CREDENTIALS_DIRECTORY}/api-key" in text
    key = tmp_path / "etc/edgellm/api-key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    checks = [c for c in systemd.calls if c[0] == "runuser"]
    assert [c[-2:] for c in checks] == [["-r", str(tiny_q4km.absolute())], ["-x", service.edgellm_command()[0]]]
    assert ["systemctl", "restart", "edgellm.service"] in systemd.calls and not any("--user" in c for c in systemd.calls)


def test_system_install_refuses_a_model_the_service_user_cannot_read(tiny_q4km: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service, "SYSTEM_UNIT_DIR", tmp_path / "etc/systemd/system")
    monkeypatch.setattr(service, "STATE_DIR", tmp_path / "var/lib/edgellm")
    monkeypatch.setattr(service, "SERVICE_USER", "root")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")

    class CannotRead(ScriptedSystemd):
        def __call__(self, command: list[str]) -> subprocess.CompletedProcess[str]:
            if command[0] == "runuser":
                self.calls.append(command)
                return subprocess.CompletedProcess(command, 1, "", "")
            return super().__call__(command)

    with pytest.raises(UsageError, match="cannot read the model") as refused:
        service.install(str(tiny_q4km), [], user_mode=False, runner=CannotRead())
    assert "/opt/edgellm" in (refused.value.hint or "") and not (tmp_path / "etc/systemd/system").exists()


# --- issue 30, item 6: every value that reaches the unit is read back by systemd as it was given ---


def _systemd_manager() -> str:
    """systemd itself, for `systemd --test` (the same Debian package as systemd-analyze)."""
    found = next((p for p in ("/lib/systemd/systemd", "/usr/lib/systemd/systemd") if os.access(p, os.X_OK)), None)
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("systemd is missing: scripts/install.sh --test installs Debian's systemd package")
        pytest.skip("systemd is not installed")
    return found


def _systemd_reads(unit_text: str) -> dict[str, object]:
    """What systemd's own unit loader makes of `unit_text`: `systemd --test` loads it as the
    default unit of a system manager and dumps it, without running anything. Returns its
    Description, WatchdogSec and ExecStart's argument list (as stored: `$$` is still there, for
    the exec-time expansion), and the loader's complaints about the file."""
    directory = Path(tempfile.mkdtemp(prefix="edgellm-unit-"))
    try:
        directory.chmod(0o755)  # test mode refuses root: the manager runs as nobody and reads it
        (directory / service.UNIT_NAME).write_text(unit_text)
        (directory / service.UNIT_NAME).chmod(0o644)
        as_nobody = {"user": 65534, "group": 65534, "extra_groups": []} if os.geteuid() == 0 else {}
        done = subprocess.run([_systemd_manager(), "--test", "--system", f"--unit={service.UNIT_NAME}", "--log-target=console"],
                              capture_output=True, text=True, timeout=120, check=False,
                              env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(directory),
                                   "SYSTEMD_UNIT_PATH": f"{directory}:"},  # ours first, then the system's
                              **as_nobody)  # type: ignore[call-overload]
    finally:
        shutil.rmtree(directory)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    block = done.stdout.split(f"\t-> Unit {service.UNIT_NAME}:\n", 1)[1].split("\n\t-> Unit ", 1)[0]
    fields = dict(line.lstrip("\t").split(": ", 1) for line in block.splitlines() if line.startswith("\t\t") and ": " in line)
    # The command line is dumped shell-quoted: "..." with \ before " \ ` $, or a bare word.
    words = re.findall(r'"((?:[^"\\]|\\.)*)"|(\S+)', fields["Command Line"])
    argv = [re.sub(r"\\(.)", r"\1", quoted) if quoted or not bare else bare for quoted, bare in words]
    complaints = [line for line in (done.stdout + done.stderr).splitlines() if re.search(rf"/{service.UNIT_NAME}:\d+: ", line)]
    return {"description": fields["Description"], "watchdog": fields["WatchdogSec"], "argv": argv, "complaints": complaints}


def _at_exec(word: str) -> str:
    """An ExecStart word as the started process receives it: systemd turns $$ into $ (and expands
    ${NAME}, which edgellm writes only for the credentials directory)."""
    assert "$" not in word.replace("$$", ""), word
    return word.replace("$$", "$")


def _load_credential(unit_text: str) -> str:
    """LoadCredential='s source path as systemd reads it (systemd --test does not dump it): the
    text after the first ':', with %% for %; any other % would be a specifier."""
    line = next(line for line in unit_text.splitlines() if line.startswith("LoadCredential="))
    _, path = line.removeprefix("LoadCredential=").split(":", 1)
    assert "%" not in path.replace("%%", ""), line
    return path.replace("%%", "%")


@pytest.fixture()
def odd_dir(tmp_path: Path) -> Path:
    """A directory whose name systemd would read other than it is, unescaped: specifiers, $, quotes."""
    odd = tmp_path / "models %n 100% $HOME \"q\" 'a' back\\slash ü"
    odd.mkdir()
    return odd


def test_percent_and_dollar_in_every_value_read_back_as_given(tiny_f32: Path, odd_dir: Path) -> None:
    model = odd_dir / "k%n%i $HOME.gguf"
    os.link(tiny_f32, model)
    key = odd_dir / "key%n"
    printed = run_cli("service", "unit", "-m", str(model), "--api-key-file", str(key),
                      "--alias", "it's 100% $done ${CREDENTIALS_DIRECTORY} ;", "--think-message", ";")
    assert printed.returncode == 0, printed.stderr
    text = printed.stdout.decode()
    read = _systemd_reads(text)
    assert read["complaints"] == [], read["complaints"]
    assert read["description"] == f"edgellm: OpenAI-compatible LLM server ({model.name})"  # was '(kedgellm.service....gguf)'
    argv = [_at_exec(word) for word in read["argv"][:-1]] + read["argv"][-1:]  # type: ignore[index]
    assert argv == [*service.edgellm_command(), "serve", "-m", str(model), "--alias", "it's 100% $done ${CREDENTIALS_DIRECTORY} ;",
                    "--think-message", ";", "--api-key-file", "${CREDENTIALS_DIRECTORY}/api-key"]
    assert read["argv"][-1] == "${CREDENTIALS_DIRECTORY}/api-key"  # type: ignore[index]  # edgellm's own, expanded by systemd
    assert _load_credential(text) == str(key)  # was '.../keyedgellm.service'
    checked = _verify(text, odd_dir, user=False)
    assert checked.returncode == 0 and checked.stderr.strip() == "", checked.stderr


def test_a_user_units_key_file_reads_back_as_given(tiny_f32: Path, odd_dir: Path) -> None:
    key = odd_dir / "key%n$x"
    printed = run_cli("service", "unit", "--user", "-m", str(tiny_f32), "--api-key-file", str(key))
    assert printed.returncode == 0, printed.stderr
    read = _systemd_reads(printed.stdout.decode())
    assert [_at_exec(word) for word in read["argv"]][-2:] == ["--api-key-file", str(key)]  # type: ignore[attr-defined]


def _refused(result: subprocess.CompletedProcess[bytes], words: str) -> str:
    err = result.stderr.decode()
    assert result.returncode == 2, err
    assert words in err and "Traceback" not in err and result.stdout == b""
    assert err.startswith("error: ") and err.count("\n") <= 2, err  # the error and its hint, a line each
    return err


@pytest.mark.parametrize("name, shown", [
    ("model\nExecStartPre=touch x.gguf", "model\\nExecStartPre=touch x.gguf' holds a line feed (U+000A)"),
    ("model\rExecStartPre=touch x.gguf", "model\\rExecStartPre=touch x.gguf' holds a carriage return (U+000D)"),
])
def test_a_line_break_in_the_model_path_is_refused(tiny_f32: Path, tmp_path: Path, name: str, shown: str) -> None:
    # It was written raw into ExecStart= and Description=: systemd ends a line at CR as at LF.
    model = tmp_path / name
    os.link(tiny_f32, model)
    for command in ("unit", "install"):
        result = run_cli("service", command, "--user", "-m", str(model), XDG_CONFIG_HOME=str(tmp_path / "config"))
        _refused(result, f"/{shown}")
    assert not (tmp_path / "config").exists()


@pytest.mark.parametrize("key", ["key.txt\nAnyDirective=1", "key.txt\rAnyDirective=1", "key\x1b[2J.txt"])
def test_a_control_character_in_the_key_file_is_refused(tiny_f32: Path, tmp_path: Path, key: str) -> None:
    # The red team's case: --api-key-file $'key.txt\nAnyDirective=1' put a directive of its own
    # in the unit (after LoadCredential=), and systemd-analyze verify accepted it.
    for user in ([], ["--user"]):
        for command in ("unit", "install"):
            result = run_cli("service", command, *user, "-m", str(tiny_f32), "--api-key-file", key,
                             XDG_CONFIG_HOME=str(tmp_path / "config"))
            err = _refused(result, "--api-key-file '")
            assert "which a systemd unit cannot carry" in err and ("needs root" not in err)
    assert not (tmp_path / "config").exists()


def test_a_carriage_return_in_a_serve_option_is_refused(tiny_f32: Path, tmp_path: Path) -> None:
    result = run_cli("service", "unit", "-m", str(tiny_f32), "--alias", "x\rExecStartPre=/bin/sh -c id")
    _refused(result, "--alias 'x\\rExecStartPre=/bin/sh -c id' holds a carriage return (U+000D)")
    result = run_cli("service", "install", "--user", "-m", str(tiny_f32), "--alias=x\rUser=root", XDG_CONFIG_HOME=str(tmp_path))
    _refused(result, "--alias 'x\\rUser=root' holds a carriage return")


def test_a_key_file_systemd_would_join_with_the_next_line_is_refused(tiny_f32: Path, tmp_path: Path) -> None:
    # A LoadCredential= path ending in a backslash continued onto the next line: systemd read
    # `ProtectSystem=strict` (after the comment line) as part of the path and dropped the hardening.
    for key in ("/etc/edgellm/key\\", "/etc/edgellm/key "):
        result = run_cli("service", "unit", "-m", str(tiny_f32), "--api-key-file", key)
        _refused(result, "ends in whitespace or a backslash")
    # In a user unit the key is an ExecStart= word, quoted: it may end as it likes.
    assert run_cli("service", "unit", "--user", "-m", str(tiny_f32), "--api-key-file", str(tmp_path / "key\\")).returncode == 0


def test_a_key_file_with_dot_dot_is_named_as_systemd_accepts_it(tiny_f32: Path, tmp_path: Path) -> None:
    # LoadCredential= ignores a source path that is not normalized ("not valid, ignoring"), and
    # serve would then start without its key.
    (tmp_path / "etc").mkdir()
    printed = run_cli("service", "unit", "-m", str(tiny_f32), "--api-key-file", str(tmp_path / "etc" / ".." / "key"))
    assert printed.returncode == 0, printed.stderr
    text = printed.stdout.decode()
    assert _load_credential(text) == str(tmp_path / "key")
    checked = _verify(text, tmp_path, user=False)
    assert checked.returncode == 0 and checked.stderr.strip() == "", checked.stderr


@pytest.mark.parametrize("seconds", ["100000000000000000000", "18446744073709", "3601", "4", "0", "-5"])
def test_a_watchdog_out_of_range_is_refused(tiny_f32: Path, tmp_path: Path, seconds: str) -> None:
    # 100000000000000000000 was written as is; systemd could not parse it and ran the service with
    # no watchdog at all (systemd 252 parses at most 18446744073708 s).
    for command in ("unit", "install"):
        result = run_cli("service", command, "--user", "-m", str(tiny_f32), "--watchdog", seconds, XDG_CONFIG_HOME=str(tmp_path))
        _refused(result, f"--watchdog {seconds}: expected 5 to 3600 seconds")


def test_the_watchdogs_that_are_accepted_are_the_ones_systemd_reads(tiny_f32: Path) -> None:
    for seconds, shown in (("5", "5s"), ("3600", "1h")):
        printed = run_cli("service", "unit", "-m", str(tiny_f32), "--watchdog", seconds)
        assert printed.returncode == 0, printed.stderr
        assert _systemd_reads(printed.stdout.decode())["watchdog"] == shown
    with pytest.raises(UsageError, match="--watchdog 0: expected"):
        service.render_unit(service.UnitSpec(command=["/usr/bin/edgellm"], model_path=tiny_f32, watchdog_s=0))
