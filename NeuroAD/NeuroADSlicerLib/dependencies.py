"""What the engine needs in Slicer's Python, checked from package metadata only (importing
torch into Slicer's process is exactly what the module avoids), and the constraints that keep
an install from replacing packages Slicer itself ships."""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, packages_distributions, version
from pathlib import Path

from packaging.requirements import Requirement

TORCH_REQUIREMENT = "torch>=2.1"
# Slicer's own packages (and torch, which only the PyTorch extension installs): an install
# must keep their versions, or fail rather than replace them.
PROTECTED = ("numpy", "SimpleITK", "requests", "torch")


def readRequirements(path: str | Path) -> list[str]:
    """The requirement lines of a requirements file (no comments, no pip options)."""
    lines = (line.split("#")[0].strip() for line in Path(path).read_text().splitlines())
    return [line for line in lines if line and not line.startswith("-")]


def missingRequirements(requirements: list[str]) -> list[str]:
    """The requirements not satisfied by what is installed (missing or too old)."""
    missing = []
    for text in requirements:
        requirement = Requirement(text)
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        try:
            installed = version(requirement.name)
        except PackageNotFoundError:
            missing.append(text)
            continue
        if not requirement.specifier.contains(installed, prereleases=True):
            missing.append(text)
    return missing


def protectedConstraints(names: tuple[str, ...] = PROTECTED) -> str:
    """A pip constraints file's text pinning each installed protected package to its
    installed version."""
    lines = []
    for name in names:
        try:
            lines.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            continue
    return "\n".join(lines) + "\n"


def alreadyImported(requirements: list[str]) -> list[str]:
    """The distributions among `requirements` that this process has already imported (after
    an upgrade, those need a restart)."""
    imported = set()
    for module, distributions in packages_distributions().items():
        if module in sys.modules:
            imported.update(name.lower() for name in distributions)
    return [text for text in requirements if Requirement(text).name.lower() in imported]
