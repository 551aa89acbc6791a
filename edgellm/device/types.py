"""What edgellm knows about a machine: Device (the `detect --json` schema), its CPU clusters and
thermal zones. Plain data."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

UNKNOWN = "unknown"



@dataclass
class Cluster:
    """CPUs of one micro-architecture (or one capacity/frequency class when the part is unknown)."""

    cpus: list[int]
    name: str
    max_freq_khz: int | None = None
    capacity: int | None = None
    part: str | None = None
    fastest: bool = False
    efficiency: bool = False  # in-order little cores (A5xx) or x86 E-cores: `little_cores`
    signal: str = ""  # what set this cluster apart from the others, as `detect` explains it



@dataclass
class ThermalZone:
    zone: str
    type: str
    celsius: float | None



@dataclass
class Device:
    """What edgellm knows about the machine. `to_json()` is the `detect --json` schema."""

    board: str = UNKNOWN
    soc: str = UNKNOWN
    arch: str = UNKNOWN
    cpu_model: str = UNKNOWN
    cpu_count: int = 0
    cpus_possible: int = 0
    clusters: list[Cluster] = field(default_factory=list)
    big_cores: list[int] = field(default_factory=list)
    little_cores: list[int] = field(default_factory=list)
    features: list[str] = field(default_factory=list)
    mem_total_bytes: int | None = None
    mem_available_bytes: int | None = None
    swap_total_bytes: int | None = None
    swap_free_bytes: int | None = None
    page_size_bytes: int | None = None
    thermal: list[ThermalZone] = field(default_factory=list)
    dt_compatible: list[str] = field(default_factory=list)
    cpu_parts: dict[int, str] = field(default_factory=dict)
    core_of_cpu: dict[int, str] = field(default_factory=dict)
    system: str = "linux"
    sysroot: str = "/"
    kernel: str = UNKNOWN  # the kernel release, from /proc/version
    android: str | None = None  # what shows the device runs Android (None: it does not)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["cpu_parts"] = {str(cpu): part for cpu, part in self.cpu_parts.items()}
        data["core_of_cpu"] = {str(cpu): core for cpu, core in self.core_of_cpu.items()}
        return data

    @property
    def identity(self) -> str:
        """This machine among others of its profile (what a measurement made here is filed under)."""
        return f"{self.board} | {self.soc} | {self.cpu_model} | {self.cpu_count} cores"

    def physical_core_count(self, cpus: Iterable[int]) -> int:
        """How many physical cores the CPU ids cover (SMT siblings count once)."""
        ids = list(cpus)
        return len({self.core_of_cpu.get(cpu, f"cpu{cpu}") for cpu in ids})



def assign_big_little(device: Device) -> None:
    if not device.clusters:
        return
    device.big_cores = list(device.clusters[0].cpus)
    device.little_cores = sorted(cpu for c in device.clusters if c.efficiency for cpu in c.cpus)
