"""Heat: thermal zones, CPU frequency and the Pi firmware's throttle word. detect lists the zones,
chat shows the hottest, bench samples them all with a HeatProbe while it measures."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path

from edgellm.device.sysfs import read_int, read_text
from edgellm.device.types import UNKNOWN, ThermalZone

_THERMAL_ZONE = re.compile(r"thermal_zone(\d{1,9})", re.ASCII)



# Below this a reading is a sensor's error value (an unconnected one reads about -274 °C), not heat:
# Device.thermal lists it as read (detect shows the broken sensor), the hottest-zone readings skip it.
IMPLAUSIBLE_BELOW_C = -50.0



def thermal_zones(root: Path) -> list[Path]:
    """The thermal zones (thermal_zoneN) below root/sys/class/thermal, in the kernel's order."""
    try:
        found = [(int(m.group(1)), entry) for entry in (root / "sys/class/thermal").iterdir()
                 if (m := _THERMAL_ZONE.fullmatch(entry.name))]
    except OSError:
        return []
    return [entry for _, entry in sorted(found)]



def zone_celsius(zone: Path) -> float | None:
    """A zone's temperature (sysfs writes millidegrees), None when unreadable."""
    millideg = read_int(zone, "temp")
    return round(millideg / 1000.0, 1) if millideg is not None else None



def hottest_celsius(readings: Iterable[float | None]) -> float | None:
    """The hottest plausible reading: a CPU under load is the hottest thing on these boards."""
    temps = [celsius for celsius in readings if celsius is not None and celsius > IMPLAUSIBLE_BELOW_C]
    return max(temps) if temps else None



def read_thermal(root: Path) -> list[ThermalZone]:
    """Every thermal zone with its type and its temperature as read (None: unreadable)."""
    return [ThermalZone(zone=zone.name, type=(read_text(zone, "type") or UNKNOWN).strip(), celsius=zone_celsius(zone))
            for zone in thermal_zones(root)]



def cpu_temperature(sysroot: Path | str = "/") -> float | None:
    """The hottest thermal zone now, reading only the zones' temperatures (cheap: no full detection)."""
    return hottest_celsius(zone_celsius(zone) for zone in thermal_zones(Path(sysroot)))



# Bits of the Raspberry Pi firmware's get_throttled word (vcgencmd get_throttled).
THROTTLE_BITS = {
    0: "under-voltage",
    1: "arm frequency capped",
    2: "throttled",
    3: "soft temperature limit",
    16: "under-voltage has occurred",
    17: "arm frequency capping has occurred",
    18: "throttling has occurred",
    19: "soft temperature limit has occurred",
}



def decode_throttled(value: int) -> list[str]:
    return [text for bit, text in THROTTLE_BITS.items() if value & (1 << bit)]



class HeatProbe:
    """Temperatures, CPU frequencies and Pi throttling below `sysroot`, read again at every sample
    (bench samples while it measures); the files are found once, when the probe is made."""

    def __init__(self, sysroot: str | Path = "/", cpus: Sequence[int] | None = None) -> None:
        root = Path(sysroot)
        self.sysroot = root
        self._zones = [zone for zone in thermal_zones(root) if (zone / "temp").exists()]
        wanted = set(cpus) if cpus else None
        self._cpufreq_dirs = [
            path.parent for path in sorted((root / "sys/devices/system/cpu").glob("cpu[0-9]*/cpufreq/scaling_cur_freq"))
            if wanted is None or int(path.parent.parent.name[3:]) in wanted
        ]
        self._vcgencmd = shutil.which("vcgencmd") if root.resolve() == Path("/") else None

    @property
    def has_temperature(self) -> bool:
        return bool(self._zones)

    def celsius(self) -> float | None:
        """The hottest zone now."""
        return hottest_celsius(zone_celsius(zone) for zone in self._zones)

    def mean_freq_khz(self) -> float | None:
        values = [v for v in (read_int(path, "scaling_cur_freq") for path in self._cpufreq_dirs) if v]
        return sum(values) / len(values) if values else None

    def throttled(self) -> int | None:
        """The firmware's throttle word, from sysfs (newer Pi kernels) or `vcgencmd get_throttled`."""
        value = read_text(self.sysroot, "sys/devices/platform/soc/soc:firmware/get_throttled")
        if value is None and self._vcgencmd:
            try:
                out = subprocess.run([self._vcgencmd, "get_throttled"], capture_output=True, text=True, timeout=5, check=False).stdout
            except (OSError, subprocess.SubprocessError):
                out = ""
            value = out.partition("=")[2] or None
        try:
            return int(value.strip(), 16) if value else None
        except ValueError:
            return None
