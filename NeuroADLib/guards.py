"""Guards before work: is the input something a head MRI can be, does its brain mask belong to
it, are the method options valid, and does the run fit in the memory this machine has?

Everything here reads headers only (and the brain mask), never resamples, so a volume whose
header says 20 mm voxels, or a 4 x 4 x 4 volume, is refused in well under a second, with the
numbers and what to do, instead of running for minutes or exhausting memory.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import (
    BrainMaskError,
    ImplausibleVolumeError,
    NotEnoughMemory,
    UsageError,
)
from .methods.registry import METHODS
from .options import check_options
from .volumes import VolumeHeader, check_header, joined, read_header, read_image

# Environment variable: the most memory (MB) a run may use, below what the machine has free.
MEMORY_LIMIT_VARIABLE = "NEUROAD_MEMORY_LIMIT_MB"
_AXES = "xyz"
# Voxel sizes (mm) of almost every head MRI: a wrong unit that lands here explains a bad header.
TYPICAL_VOXEL_MM = (0.4, 7.0)


@dataclass(frozen=True)
class HeadLimits:
    """What a head MRI can be. Voxel sizes and fields of view (mm) are per axis; the aspect
    bounds compare the largest to the smallest voxel size and field of view."""

    voxel_mm: tuple[float, float] = (0.1, 10.0)
    field_of_view_mm: tuple[float, float] = (80.0, 500.0)
    min_voxels_per_axis: int = 12
    max_voxels: int = 150_000_000
    max_voxel_anisotropy: float = 25.0
    max_field_of_view_aspect: float = 4.0
    # A brain mask marking less or more than this (mL) is not a brain mask.
    brain_mask_ml: tuple[float, float] = (300.0, 3000.0)


@dataclass(frozen=True)
class MemoryModel:
    """Peak memory of a run (MB): a fixed part (libraries, template, model grid), a part per
    voxel of the scan (its copies through reorientation, bias correction, registration and
    the way back), and a part per method by family (a loaded model and its working memory).
    From peaks measured with /usr/bin/time (`--threads 1`), rounded up: `neuroad run` zscore
    on the 256 x 224 x 26 demo scan 656 MB, on a 240 x 240 x 155 skull-stripped scan 874 MB;
    `neuroad preprocess` of the demo resampled to 256 x 224 x 142 (skull on) 1572 MB; `run`
    cadd (respacing 10) on the demo 1090 MB; with 2 threads, on the demo and an IXI scan
    (where zscore peaks at 649 and 505 MB): mad_ad (default config) 1026 and 1017 MB, cddpm
    1154 and 1185 MB, thor 1384 and 1505 MB, autoddpm 1468 and 1492 MB
    (benchmarks/method_cost.sh); with 1 thread, cond_ldm 1062 and 1067 MB."""

    base_mb: float = 500.0
    bytes_per_voxel: float = 200.0
    family_mb: dict = field(default_factory=lambda: {"zscore": 50.0, "cadd": 600.0,
                                                     "mad_ad": 550.0, "cddpm": 700.0,
                                                     "ddpm": 1050.0, "sdm": 800.0,
                                                     "cond_ldm": 600.0})

    def estimate_mb(self, voxels: int, methods: list[str]) -> float:
        families = [METHODS[m].family for m in methods if m in METHODS]
        return (self.base_mb + self.bytes_per_voxel * voxels / 2**20
                + sum(self.family_mb.get(f, 0.0) for f in families))


def check_run(source: str | os.PathLike, methods: list[str],
              brain_mask: str | os.PathLike | None = None, options: dict | None = None,
              limits: HeadLimits | None = None, memory: MemoryModel | None = None
              ) -> dict[str, dict]:
    """Every check a run can make before loading a model or reading the scan's voxels: the
    options (OptionError), the scan's header (InputError and its kinds), the brain mask
    (BrainMaskError), and the memory estimate (NotEnoughMemory). Returns the options as their
    types."""
    checked = check_options(options)
    header = check_scan(source, limits)
    if brain_mask is not None:
        check_brain_mask(brain_mask, header, limits)
    check_memory(header, methods, memory)
    return checked


def check_scan(source: str | os.PathLike, limits: HeadLimits | None = None) -> VolumeHeader:
    """The scan's header, checked to be one 3D scalar volume of a head's geometry."""
    header = read_header(source)
    check_header(header, str(source))
    check_head_geometry(header, str(source), limits)
    return header


def check_head_geometry(header: VolumeHeader, name: str = "input",
                        limits: HeadLimits | None = None) -> None:
    """Refuse, with the numbers and a likely cause, a voxel size, field of view, voxel count or
    aspect that no head MRI has (e.g. a header written in cm, or a 4 x 4 x 4 volume)."""
    limits = limits or HeadLimits()
    spacing = np.array(header.spacing, dtype=float)
    size = np.array(header.size)
    fov = spacing * size
    low, high = limits.voxel_mm
    for axis, value in enumerate(spacing):
        if not low <= value <= high:
            raise ImplausibleVolumeError(
                f"{name}: voxel size {value:g} mm along {_AXES[axis]} "
                f"({joined(spacing)} mm) is outside the {low:g}-{high:g} mm of head MRI. "
                f"{_unit_hint(value)}Fix the voxel size in the header "
                "(e.g. re-export the scan, or correct it in 3D Slicer's Volumes module).")
    if size.min() < limits.min_voxels_per_axis:
        raise ImplausibleVolumeError(
            f"{name}: {joined(size)} voxels is too small to hold a brain (at least "
            f"{limits.min_voxels_per_axis} voxels along each axis): give the whole head scan.")
    low, high = limits.field_of_view_mm
    for axis, value in enumerate(fov):
        if not low <= value <= high:
            raise ImplausibleVolumeError(
                f"{name}: the field of view is {joined(fov)} mm ({joined(size)} voxels of "
                f"{joined(spacing)} mm); {value:.0f} mm along {_AXES[axis]} is outside "
                f"the {low:g}-{high:g} mm a head MRI covers. "
                f"{_unit_hint(spacing[axis])}"
                "Give a scan of the whole head, with the voxel size in mm in its header.")
    if header.voxels > limits.max_voxels:
        raise ImplausibleVolumeError(
            f"{name}: {header.voxels / 1e6:.0f} million voxels ({joined(size)}) is more than a "
            f"head MRI holds (at most {limits.max_voxels / 1e6:.0f} million): crop it to the "
            "head or resample it to 1 mm first.")
    anisotropy = spacing.max() / spacing.min()
    if anisotropy > limits.max_voxel_anisotropy:
        raise ImplausibleVolumeError(
            f"{name}: voxels of {joined(spacing)} mm are {anisotropy:.0f} times longer than wide "
            f"(at most {limits.max_voxel_anisotropy:g}): too anisotropic to register. Check "
            "the slice thickness in the header, or use a scan with thinner slices.")
    aspect = fov.max() / fov.min()
    if aspect > limits.max_field_of_view_aspect:
        raise ImplausibleVolumeError(
            f"{name}: the field of view, {joined(fov)} mm, is {aspect:.1f} times longer than "
            f"wide (a head is at most {limits.max_field_of_view_aspect:g}): is it a head MRI, "
            "and is the voxel size right along every axis?")


def _unit_hint(value: float) -> str:
    """A wrong unit that would explain an implausible voxel size, as a question, or ''."""
    for factor, unit in ((0.1, "cm"), (10.0, "cm"), (0.001, "m"), (1000.0, "m")):
        if TYPICAL_VOXEL_MM[0] <= value * factor <= TYPICAL_VOXEL_MM[1]:
            return f"Is the header in {unit} (then {value * factor:g} mm)? "
    return ""


def check_brain_mask(mask: str | os.PathLike, scan: VolumeHeader,
                     limits: HeadLimits | None = None) -> None:
    """A brain mask must have the scan's geometry and mark a brain-sized region."""
    limits = limits or HeadLimits()
    header = read_header(mask)
    check_header(header, f"Brain mask {mask}")
    if not _same_geometry(header, scan):
        raise BrainMaskError(
            f"The brain mask {mask} has another geometry than the scan: the mask is "
            f"{header.describe()}, the scan {scan.describe()}. Give the mask on the scan's "
            "own voxel grid (resample it onto the scan, e.g. with 3D Slicer's Resample Image "
            "(BRAINS) or Crop Volume modules).")
    image = read_image(mask)  # kept alive while its array view is used
    array = sitk.GetArrayViewFromImage(image)
    volume_ml = float(np.count_nonzero(array > 0)) * float(np.prod(header.spacing)) / 1000.0
    low, high = limits.brain_mask_ml
    if volume_ml == 0:
        raise BrainMaskError(f"The brain mask {mask} is empty (no voxel above 0).")
    if not low <= volume_ml <= high:
        raise BrainMaskError(
            f"The brain mask {mask} marks {volume_ml:.0f} mL; a brain mask marks "
            f"{low:g}-{high:g} mL. Is it a lesion mask or a head mask? Give the brain mask "
            "(1 inside the brain, 0 outside), or leave it out for automatic extraction.")


def _same_geometry(a: VolumeHeader, b: VolumeHeader) -> bool:
    """Same size and, within what file formats round, the same spacing, origin, direction."""
    if tuple(a.size) != tuple(b.size):
        return False
    spacing = min(min(a.spacing), min(b.spacing))
    return (np.allclose(a.spacing, b.spacing, rtol=1e-3, atol=0)
            and np.allclose(a.origin, b.origin, atol=0.1 * spacing)
            and np.allclose(a.direction, b.direction, atol=1e-3))


def check_memory(header: VolumeHeader, methods: list[str],
                 memory: MemoryModel | None = None) -> None:
    """Refuse a run whose memory estimate exceeds what is available (rather than swapping)."""
    needed = (memory or MemoryModel()).estimate_mb(header.voxels, methods)
    available, source = available_memory_mb()
    if available is not None and needed > available:
        raise NotEnoughMemory(
            f"This run needs about {needed / 1024:.1f} GB of memory ({header.voxels / 1e6:.1f} "
            f"million voxels, methods {', '.join(methods)}), but {source} is "
            f"{available / 1024:.1f} GB. Close other programs, run one method at a time, or "
            "crop or downsample the scan.")


def available_memory_mb() -> tuple[float | None, str]:
    """Memory a run may use (MB) and where that figure comes from: the machine's available
    memory, a container (cgroup) limit, or $NEUROAD_MEMORY_LIMIT_MB, whichever is lowest;
    None where none can be read."""
    figures = [(value, source) for value, source in (
        (_system_available_mb(), "the memory available on this machine"),
        (_cgroup_available_mb(), "the memory left to this container"),
        (_configured_limit_mb(), f"${MEMORY_LIMIT_VARIABLE}"),
    ) if value is not None]
    if not figures:
        return None, ""
    return min(figures)


def _configured_limit_mb() -> float | None:
    value = os.environ.get(MEMORY_LIMIT_VARIABLE, "").strip()
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        raise UsageError(f"${MEMORY_LIMIT_VARIABLE}={value!r} is not a number of MB.") from None


def _system_available_mb() -> float | None:
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) / 1024
    if sys.platform == "win32":
        return _windows_available_mb()
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (ValueError, OSError, AttributeError):
        return None


def _windows_available_mb() -> float | None:
    import ctypes

    class MemoryStatus(ctypes.Structure):
        _fields_ = [("dwLength", ctypes.c_ulong), ("dwMemoryLoad", ctypes.c_ulong),
                    ("ullTotalPhys", ctypes.c_ulonglong), ("ullAvailPhys", ctypes.c_ulonglong),
                    ("ullTotalPageFile", ctypes.c_ulonglong),
                    ("ullAvailPageFile", ctypes.c_ulonglong),
                    ("ullTotalVirtual", ctypes.c_ulonglong),
                    ("ullAvailVirtual", ctypes.c_ulonglong),
                    ("ullAvailExtendedVirtual", ctypes.c_ulonglong)]

    status = MemoryStatus()
    status.dwLength = ctypes.sizeof(MemoryStatus)
    if not ctypes.windll.kernel32.GlobalMemoryStatusEx(ctypes.byref(status)):
        return None
    return status.ullAvailPhys / 2**20


def _cgroup_available_mb() -> float | None:
    """The memory limit of this process's cgroup less its usage (cgroup v2, then v1)."""
    for limit, usage in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                         ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                          "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            cap = Path(limit).read_text().strip()
            used = float(Path(usage).read_text().strip())
        except (OSError, ValueError):
            continue
        if cap.isdigit() and int(cap) < 2**60:
            return (int(cap) - used) / 2**20
    return None
