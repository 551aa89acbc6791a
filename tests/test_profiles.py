"""Device profiles: shipped files, strict validation, user overrides, matching."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_cli

from edgellm.device.hardware import detect
from edgellm.device.profiles import builtin_profiles_dir, load_profiles, parse_profile, select_profile
from edgellm.errors import ProfileError

SHIPPED = {"raspberry-pi-5", "rk3588", "phone-arm", "laptop-x86", "generic"}


def test_every_shipped_profile_parses_and_generic_is_last() -> None:
    profiles = load_profiles()
    assert {p.name for p in profiles} == SHIPPED
    assert profiles[-1].name == "generic"
    for profile in profiles:
        assert profile.quant_preference and profile.default_ctx <= profile.max_ctx
        assert profile.mem_bandwidth_gbps > 0 and profile.default_model


def test_profiles_readme_documents_every_key() -> None:
    from edgellm.device.profiles import MATCH_KEYS, RUNTIME_KEYS, TOP_KEYS

    readme = (builtin_profiles_dir() / "README.md").read_text()
    for key in [*TOP_KEYS, *MATCH_KEYS, *RUNTIME_KEYS]:
        assert f"`{key}`" in readme, key


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('name = "x"\n[runtime\n', "not valid TOML"),
        ('name = "x"\n[runtime]\nthreadz = 4\n', "unknown key 'runtime.threadz'"),
        ('name = "x"\n[runtime]\nthreads = "four"\n', "key 'runtime.threads' must be a whole number"),
        ('name = "x"\n[runtime]\nos_reserve = "lots"\n', "key 'runtime.os_reserve' must be a size"),
        ('name = "x"\n[runtime]\ncores = "fast"\n', "key 'runtime.cores' must be one of"),
        ('name = "x"\n[match]\ncpu_parts = ["0xd0b"]\n', "key 'match.cpu_parts'"),
        ('description = "no name"\n', "missing key 'name'"),
        ('name = "x"\ncolour = "blue"\n', "unknown key 'colour'"),
    ],
)
def test_bad_profile_names_file_and_key(text: str, message: str) -> None:
    with pytest.raises(ProfileError) as caught:
        parse_profile(text, "my.toml")
    assert caught.value.message.startswith("my.toml: ")
    assert message in caught.value.message


def test_bad_user_profile_is_one_line_error_from_every_command(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "profiles").mkdir(parents=True)
    (home / "profiles" / "mine.toml").write_text('name = "mine"\n[runtime]\nthreads = -1\n')
    for args in (("profiles",), ("detect",)):
        result = run_cli(*args, EDGELLM_HOME=str(home))
        assert result.returncode == 1
        lines = result.stderr.decode().strip().splitlines()
        assert lines[0].startswith("error: ") and "mine.toml" in lines[0] and "runtime.threads" in lines[0]
        assert "Traceback" not in result.stderr.decode()


def test_user_profile_overrides_and_adds(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "profiles").mkdir(parents=True)
    (home / "profiles" / "generic.toml").write_text('name = "generic"\ndescription = "my generic"\n')
    (home / "profiles" / "desk.toml").write_text('name = "desk"\ndescription = "my desk"\npriority = 1\n[match]\narch = ["x86_64", "aarch64"]\n')
    result = run_cli("profiles", "--json", EDGELLM_HOME=str(home))
    assert result.returncode == 0, result.stderr
    listed = {p["name"]: p for p in json.loads(result.stdout)}
    assert listed["generic"]["description"] == "my generic"
    assert "desk" in listed and listed["desk"]["matches"]


def test_profile_flag_takes_a_file(tmp_path: Path) -> None:
    path = tmp_path / "board.toml"
    path.write_text('name = "board"\n[runtime]\nthreads = 3\n')
    profile, reason = select_profile(detect("/"), str(path))
    assert profile.name == "board" and profile.threads == 3 and "--profile" in reason
    with pytest.raises(ProfileError):
        select_profile(detect("/"), str(tmp_path / "missing.toml"))
    with pytest.raises(ProfileError, match="no profile named 'nope'"):
        select_profile(detect("/"), "nope")


def test_profiles_show_json() -> None:
    result = run_cli("profiles", "show", "rk3588", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["cores"] == "big" and data["threads"] == 4 and data["match"]["cpu_parts"] == {"0xd05": 4, "0xd0b": 4}


def test_profiles_list_marks_the_match_for_a_capture() -> None:
    capture = Path(__file__).parent / "data" / "raspberry-pi-5"
    result = run_cli("profiles", "--sysroot", str(capture), "--json")
    matches = [p["name"] for p in json.loads(result.stdout) if p["matches"]]
    assert matches == ["raspberry-pi-5"]
