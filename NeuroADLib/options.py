"""Method options from a user (command line, worker request, Slicer), checked against the
registry before any work: names, types and ranges, as an OptionError that names the problem.
Free of SimpleITK and torch, so that every entry point can check options first."""

from __future__ import annotations

from .errors import OptionError
from .methods.registry import validate_options


def check_options(options: dict | None) -> dict[str, dict]:
    """{method: {option: value}} checked against the registry (names, types, ranges)."""
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise OptionError(f"Options must map method names to their options, not {options!r}.")
    try:
        return {name: validate_options(name, values) for name, values in options.items()}
    except ValueError as error:
        raise OptionError(str(error)) from None
