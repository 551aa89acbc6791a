"""Device profiles: TOML files that say how to run models on a kind of device, and how to match it.

Built-in profiles ship in the wheel (the repository's `profiles/` folder becomes the
`edgellm.profile_data` package data, so the name does not clash with this module). User profiles in `$EDGELLM_HOME/profiles/` add new names or
override built-in ones. Keys are validated strictly: a typo in a profile is an error naming the
file and the key, never a silently ignored setting. `profiles/README.md` documents every key.
"""

from __future__ import annotations

import fnmatch
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgellm.device.hardware import detect
from edgellm.device.types import Device
from edgellm.errors import ProfileError
from edgellm.paths import user_profiles_dir
from edgellm.units import parse_size

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

CORE_CHOICES = ("big", "all", "performance")
KV_TYPES = ("f16", "q8_0", "q4_0")
FALLBACK_PROFILE = "generic"


@dataclass(frozen=True)
class MatchRules:
    """How a profile recognises a device. `arch`/`system` must hold; then any one other rule."""

    arch: tuple[str, ...] = ()
    system: tuple[str, ...] = ()
    board: tuple[str, ...] = ()
    compatible: tuple[str, ...] = ()
    soc: tuple[str, ...] = ()
    cpu_model: tuple[str, ...] = ()
    cpu_parts: tuple[tuple[str, int], ...] = ()
    min_clusters: int = 0
    android: bool = False
    core_names: tuple[str, ...] = ()

    def explain(self, device: Device) -> str | None:
        """Why the device matches, or None when it does not."""
        if self.arch and device.arch not in self.arch:
            return None
        if self.system and device.system not in self.system:
            return None
        for pattern in self.board:
            if fnmatch.fnmatch(device.board, pattern):
                return f"board '{device.board}' matches '{pattern}'"
        for pattern in self.compatible:
            for entry in device.dt_compatible:
                if fnmatch.fnmatch(entry, pattern):
                    return f"device-tree compatible '{entry}' matches '{pattern}'"
        for pattern in self.soc:
            if fnmatch.fnmatch(device.soc.lower(), pattern.lower()):
                return f"SoC '{device.soc}' matches '{pattern}'"
        for pattern in self.cpu_model:
            if fnmatch.fnmatch(device.cpu_model.lower(), pattern.lower()):
                return f"CPU '{device.cpu_model}' matches '{pattern}'"
        if self.cpu_parts:
            counts: dict[str, int] = {}
            for part in device.cpu_parts.values():
                counts[part] = counts.get(part, 0) + 1
            if counts == dict(self.cpu_parts):
                described = " + ".join(f"{n}x {part}" for part, n in self.cpu_parts)
                return f"CPU parts are exactly {described}"
        if self.android and device.android:
            return device.android
        if self.min_clusters and len(device.clusters) >= self.min_clusters:
            return f"{len(device.clusters)} core clusters (phone-style big.LITTLE)"
        for pattern in self.core_names:
            for cluster in device.clusters:
                if fnmatch.fnmatch(cluster.name, pattern):
                    return f"core '{cluster.name}' matches '{pattern}'"
        has_positive_rule = any(
            (self.board, self.compatible, self.soc, self.cpu_model, self.cpu_parts, self.min_clusters, self.android,
             self.core_names)
        )
        if not has_positive_rule and (self.arch or self.system):
            return f"architecture {device.arch}"
        return None


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    source: str
    priority: int = 100
    default_model: str = "deepseek-r1-1.5b"
    match: MatchRules = field(default_factory=MatchRules)
    cores: str = "big"
    threads: int = 0
    threads_batch: int = 0
    quant_preference: tuple[str, ...] = ("Q4_K_M", "Q4_K_S", "Q4_0")
    default_ctx: int = 4096
    max_ctx: int = 32768
    kv_type: str = "f16"
    allow_kv_q8: bool = True
    n_batch: int = 512
    mmap: bool = True
    mlock: bool = False
    os_reserve_bytes: int = 512 * 1024**2
    mem_bandwidth_gbps: float = 10.0
    throttle_celsius: float | None = None
    # Reasoning tokens before edgellm closes the reasoning (None: the model decides), and the
    # budgets serve gives reasoning_effort low / medium / high.
    think_budget: int | None = None
    think_budget_low: int = 256
    think_budget_medium: int = 1024
    think_budget_high: int = 4096

    def to_json(self) -> dict[str, Any]:
        rules = {k: v for k, v in self.match.__dict__.items() if v}
        if "cpu_parts" in rules:
            rules["cpu_parts"] = dict(self.match.cpu_parts)
        data = {k: v for k, v in self.__dict__.items() if k != "match"}
        data["match"] = {k: list(v) if isinstance(v, tuple) else v for k, v in rules.items()}
        data["quant_preference"] = list(self.quant_preference)
        return data


# key -> (type check, converter, description used in error messages)
def _str_list(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise TypeError("a string or a list of strings")


def _parts(value: Any) -> tuple[tuple[str, int], ...]:
    if isinstance(value, dict) and all(isinstance(v, int) and not isinstance(v, bool) for v in value.values()):
        return tuple((str(k).lower(), int(v)) for k, v in value.items())
    raise TypeError('a table of CPU part -> count, e.g. { "0xd05" = 4, "0xd0b" = 4 }')


def _int(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise TypeError("a whole number >= 0")


def _positive_int(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    raise TypeError("a whole number > 0")


def _float(value: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    raise TypeError("a number > 0")


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise TypeError("true or false")


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    raise TypeError("a string")


def _size(value: Any) -> int:
    if isinstance(value, bool):
        raise TypeError("a size such as '512MiB' or a number of bytes")
    try:
        return parse_size(value)
    except (ValueError, TypeError):
        raise TypeError("a size such as '512MiB' or a number of bytes") from None


def _choice(options: tuple[str, ...]):  # type: ignore[no-untyped-def]
    def check(value: Any) -> str:
        if isinstance(value, str) and value in options:
            return value
        raise TypeError("one of " + ", ".join(repr(o) for o in options))

    return check


def _quants(value: Any) -> tuple[str, ...]:
    return tuple(q.upper() for q in _str_list(value))


TOP_KEYS = {"name": _text, "description": _text, "priority": _int, "default_model": _text}
MATCH_KEYS = {
    "arch": _str_list, "system": _str_list, "board": _str_list, "compatible": _str_list,
    "soc": _str_list, "cpu_model": _str_list, "cpu_parts": _parts, "min_clusters": _int,
    "android": _bool, "core_names": _str_list,
}
RUNTIME_KEYS = {
    "cores": _choice(CORE_CHOICES), "threads": _int, "threads_batch": _int,
    "quant_preference": _quants, "default_ctx": _positive_int, "max_ctx": _positive_int,
    "kv_type": _choice(KV_TYPES), "allow_kv_q8": _bool, "n_batch": _positive_int,
    "mmap": _bool, "mlock": _bool, "os_reserve": _size, "mem_bandwidth_gbps": _float,
    "throttle_celsius": _float, "think_budget": _positive_int, "think_budget_low": _positive_int,
    "think_budget_medium": _positive_int, "think_budget_high": _positive_int,
}


def _check_table(source: str, table: Any, section: str, keys: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise ProfileError(f"{source}: [{section}] must be a table")
    out: dict[str, Any] = {}
    for key, value in table.items():
        where = f"{section}.{key}" if section else key
        if key not in keys:
            raise ProfileError(
                f"{source}: unknown key '{where}'",
                hint="known keys: " + ", ".join(sorted(keys)) + " (see profiles/README.md)",
            )
        try:
            out[key] = keys[key](value)
        except TypeError as exc:
            raise ProfileError(f"{source}: key '{where}' must be {exc}, not {value!r}") from None
    return out


def parse_profile(text: str, source: str) -> Profile:
    """Validate a profile's TOML text; errors name the file and the key."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"{source}: not valid TOML: {exc}") from None
    sections = {"match": MATCH_KEYS, "runtime": RUNTIME_KEYS}
    top = {k: v for k, v in data.items() if k not in sections}
    values = _check_table(source, top, "", TOP_KEYS)
    if "name" not in values:
        raise ProfileError(f"{source}: missing key 'name'")
    match = MatchRules(**_check_table(source, data.get("match", {}), "match", MATCH_KEYS))
    runtime = _check_table(source, data.get("runtime", {}), "runtime", RUNTIME_KEYS)
    if "os_reserve" in runtime:
        runtime["os_reserve_bytes"] = runtime.pop("os_reserve")
    profile = Profile(
        source=source,
        match=match,
        description=values.pop("description", ""),
        **values,
        **runtime,
    )
    if profile.default_ctx > profile.max_ctx:
        raise ProfileError(f"{source}: runtime.default_ctx ({profile.default_ctx}) exceeds runtime.max_ctx ({profile.max_ctx})")
    return profile


def load_profile_file(path: Path) -> Profile:
    from edgellm.files import read_regular_file  # noqa: PLC0415

    try:
        data = read_regular_file(path, MAX_PROFILE_BYTES + 1)  # never a FIFO or /dev/zero
        if len(data) > MAX_PROFILE_BYTES:
            raise ProfileError(f"{path}: larger than {MAX_PROFILE_BYTES // 1024} KiB; not a profile")
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError(f"{path}: cannot read profile: {getattr(exc, 'strerror', None) or exc}") from None
    return parse_profile(text, str(path))


MAX_PROFILE_BYTES = 256 * 1024


def builtin_profiles_dir() -> Path:
    """Installed wheels carry the profiles as edgellm/profile_data/; a source checkout has ../profiles."""
    package = Path(__file__).resolve().parent.parent  # edgellm/
    installed = package / "profile_data"
    return installed if installed.is_dir() else package.parent / "profiles"


def builtin_profile_files() -> list[tuple[str, str]]:
    """(source label, TOML text) of the profiles shipped with edgellm."""
    return [
        (f"profiles/{path.name}", path.read_text(encoding="utf-8"))
        for path in sorted(builtin_profiles_dir().glob("*.toml"))
    ]


def load_profiles(user_dir: Path | None = None) -> list[Profile]:
    """Built-in profiles overlaid by user ones (same name replaces), in matching order."""
    by_name: dict[str, Profile] = {}
    for source, text in builtin_profile_files():
        profile = parse_profile(text, source)
        by_name[profile.name] = profile
    directory = user_profiles_dir() if user_dir is None else user_dir
    if directory.is_dir():
        for path in sorted(directory.glob("*.toml")):
            profile = load_profile_file(path)
            by_name[profile.name] = profile
    return sorted(by_name.values(), key=lambda p: (p.name == FALLBACK_PROFILE, p.priority, p.name))


def find_profile(name: str, profiles: list[Profile]) -> Profile:
    for profile in profiles:
        if profile.name == name:
            return profile
    raise ProfileError(
        f"no profile named '{name}'",
        hint="see `edgellm profiles` (or pass a .toml file to --profile)",
    )


def select_profile(device: Device, requested: str | None = None, profiles: list[Profile] | None = None) -> tuple[Profile, str]:
    """`--profile` (a name or a .toml file) first, else the first profile whose rules match, else generic."""
    if requested:
        path = Path(requested).expanduser()
        if requested.endswith(".toml") or path.is_file():
            if not path.exists():
                raise ProfileError(f"{requested}: profile file not found")
            return load_profile_file(path), f"--profile {requested}"
        profiles = profiles if profiles is not None else load_profiles()
        return find_profile(requested, profiles), f"--profile {requested}"
    profiles = profiles if profiles is not None else load_profiles()
    for profile in profiles:
        if profile.name == FALLBACK_PROFILE:
            continue
        reason = profile.match.explain(device)
        if reason:
            return profile, reason
    return find_profile(FALLBACK_PROFILE, profiles), "no profile's rules match this device"


def this_device(sysroot: str = "/", requested: str | None = None) -> tuple[Device, Profile, str]:
    """The device under `sysroot` and its profile (`--profile`, else the matching one), with the
    reason the profile was chosen: what every command that plans asks first."""
    device = detect(sysroot)
    profile, reason = select_profile(device, requested)
    return device, profile, reason
