"""NVML, the NVIDIA driver's own library, opened and closed in one place.

Two readers share it: :func:`bench.devices.nvml_view` (which GPUs there are) and
:class:`GpuSensor` (what one GPU did while a cell ran: its SM clock, the other processes on
it, the clock-event "throttle" reasons). NVML needs no framework; without the package or the
driver, :func:`session` raises :class:`NvmlUnavailable` with the reason, never a traceback.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

try:
    import pynvml
except ImportError:  # pragma: no cover - a dependency; without it there is no GPU reading
    pynvml = None

#: NVML clock event ("throttle") reasons by bit; GPU idle is left out: it is not a slowdown.
THROTTLE_REASONS = {
    0x0002: "applications_clocks_setting",
    0x0004: "sw_power_cap",
    0x0008: "hw_slowdown",
    0x0010: "sync_boost",
    0x0020: "sw_thermal_slowdown",
    0x0040: "hw_thermal_slowdown",
    0x0080: "hw_power_brake_slowdown",
    0x0100: "display_clock_setting",
}


class NvmlUnavailable(Exception):
    """NVML cannot be used here; the message says why (no package, no driver, no GPU access)."""


@contextmanager
def session() -> Iterator[Any]:
    """``with session() as nvml:`` the initialised ``pynvml`` module, shut down afterwards."""
    if pynvml is None:
        raise NvmlUnavailable("NVML unavailable: nvidia-ml-py is not installed")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as error:
        raise NvmlUnavailable(f"NVML unavailable ({error}): no NVIDIA driver, or no GPU access") from None
    try:
        yield pynvml
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            pass


def text(value) -> str:
    """NVML strings are bytes in older bindings."""
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


@dataclass(frozen=True)
class GpuReading:
    """What one GPU did over a window of samples."""

    other_processes: int                 # the most processes outside the cell seen on it
    sm_clock_min_mhz: int | None
    sm_clock_mean_mhz: float | None
    sm_clock_max_mhz: int | None         # the GPU's maximum SM clock: the yardstick for the two above
    throttle_reasons: tuple[str, ...]    # every clock event reason seen active, GPU idle excepted


class GpuSensor:
    """Samples one GPU while a cell runs: open it, :meth:`sample` it, read it, :meth:`close` it.

    Opening fails softly: :attr:`error` says why and every sample is a no-op.
    """

    def __init__(self, index: int):
        self.error: str | None = None
        self._session = session()
        self._clocks: list[int] = []
        self._others = 0
        self._throttle = 0
        self._clock_max: int | None = None
        self._nvml: Any = None  # the pynvml module once the session is open
        self._handle = None
        try:
            self._nvml = self._session.__enter__()
            self._handle = self._nvml.nvmlDeviceGetHandleByIndex(index)
        except NvmlUnavailable as error:
            self.error = f"{error}: no GPU contention fields"
            return
        except Exception as error:  # noqa: BLE001 - pynvml.NVMLError, only when pynvml exists
            self.error = f"NVML unavailable ({error}): no GPU contention fields"
            self.close()
            return
        try:
            self._clock_max = int(self._nvml.nvmlDeviceGetMaxClockInfo(self._handle, self._nvml.NVML_CLOCK_SM))
        except self._nvml.NVMLError:
            pass

    @property
    def open(self) -> bool:
        return self._handle is not None

    def sample(self, cell_pids: set[int]) -> None:
        """One reading: the SM clock, processes other than ``cell_pids``, the active event reasons."""
        if self._handle is None:
            return
        nvml = self._nvml
        try:
            self._clocks.append(int(nvml.nvmlDeviceGetClockInfo(self._handle, nvml.NVML_CLOCK_SM)))
        except nvml.NVMLError:
            pass
        pids = set()
        for query in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
            try:
                pids |= {p.pid for p in getattr(nvml, query)(self._handle)}
            except (nvml.NVMLError, AttributeError):
                pass
        self._others = max(self._others, len(pids - cell_pids))
        for query in ("nvmlDeviceGetCurrentClocksEventReasons", "nvmlDeviceGetCurrentClocksThrottleReasons"):
            try:
                self._throttle |= int(getattr(nvml, query)(self._handle))
                break
            except (nvml.NVMLError, AttributeError):
                continue

    def reading(self) -> GpuReading | None:
        """What was seen; None when NVML could not be opened (:attr:`error` says why)."""
        if self.error is not None:
            return None
        clocks = self._clocks
        return GpuReading(
            other_processes=self._others,
            sm_clock_min_mhz=min(clocks) if clocks else None,
            sm_clock_mean_mhz=round(sum(clocks) / len(clocks), 1) if clocks else None,
            sm_clock_max_mhz=self._clock_max,
            throttle_reasons=tuple(name for bit, name in THROTTLE_REASONS.items() if self._throttle & bit))

    def close(self) -> None:
        if self._nvml is not None or self._handle is not None:
            self._handle = None
            self._session.__exit__(None, None, None)
