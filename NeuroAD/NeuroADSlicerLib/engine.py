"""The NeuroAD engine (NeuroADLib) as the Slicer module sees it: where it is, which methods it
offers and whether their models are installed, without importing anything heavy. The module
must start, and list its methods, before the engine's dependencies are installed.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

PACKAGE = "NeuroADLib"
REGISTRY_MODULE = "NeuroADLib.methods.registry"


def engineRoot() -> Path:
    """The folder holding the NeuroADLib package, which is made importable: the module's own
    folder when the extension build installed it there, or the repository root when the module
    is used from a source checkout."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is not None and spec.origin:
        return Path(spec.origin).resolve().parents[1]
    checkout = Path(__file__).resolve().parents[2]
    if not (checkout / PACKAGE / "__init__.py").is_file():
        raise ImportError(f"The NeuroAD engine ({PACKAGE}) is neither installed nor found in "
                          f"{checkout}: reinstall the NeuroAD extension.")
    sys.path.insert(0, str(checkout))
    return checkout


def registry() -> ModuleType:
    """The engine's method registry, loaded from its file alone: importing it through its
    package would run `NeuroADLib/methods/__init__.py`, which imports the methods' numerical
    code (numpy, scipy, scikit-image) that may not be installed yet."""
    if REGISTRY_MODULE in sys.modules:
        return sys.modules[REGISTRY_MODULE]
    path = engineRoot() / PACKAGE / "methods" / "registry.py"
    spec = importlib.util.spec_from_file_location(REGISTRY_MODULE, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[REGISTRY_MODULE] = module  # dataclasses look their module up while defined
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class MethodChoice:
    """A method of the registry and the model that would run it (None: no model installed)."""

    name: str
    description: str
    covariates: tuple[str, ...]
    options: dict
    model: str | None

    @property
    def available(self) -> bool:
        return self.model is not None


def methodChoices() -> list[MethodChoice]:
    """Every registered method, in registry order, with its installed model if any."""
    engineRoot()
    from NeuroADLib.errors import ModelError
    from NeuroADLib.models import find_bundle

    choices = []
    for info in registry().METHODS.values():
        try:
            model = find_bundle(info.name).id
        except ModelError:
            model = None
        choices.append(MethodChoice(info.name, info.description, tuple(info.covariates),
                                    dict(info.options), model))
    return choices


def demoCase() -> tuple[Path, float, str]:
    """The demo case shipped with the engine (a raw clinical T1 with a glioma) and the
    illustrative age and sex the engine's demo uses with it."""
    engineRoot()
    from NeuroADLib.cli import DEMO_AGE, DEMO_SCAN, DEMO_SEX

    return DEMO_SCAN, DEMO_AGE, DEMO_SEX


def parseOptions(text: str) -> dict[str, dict]:
    """Method options written as on the command line, `METHOD.NAME=VALUE` separated by spaces
    or commas, checked against the registry (known, of their type, in range) and returned as
    their types; ValueError saying what is valid otherwise."""
    methods = registry().METHODS
    options: dict[str, dict] = {}
    for item in text.replace(",", " ").split():
        key, _, value = item.partition("=")
        method, _, name = key.partition(".")
        if not (method and name and value):
            raise ValueError(f"Option {item!r}: write METHOD.NAME=VALUE, e.g. cadd.t_int=1000.")
        if method not in methods or name not in methods[method].options:
            known = ", ".join(f"{m}.{o}" for m, info in methods.items() for o in info.options)
            raise ValueError(f"Unknown option {key!r}; known options: {known}.")
        try:
            options.setdefault(method, {})[name] = json.loads(value)
        except json.JSONDecodeError:
            options.setdefault(method, {})[name] = value
    return {method: registry().validate_options(method, values)
            for method, values in options.items()}


def requestProblems(hasInput: bool, age: float | None, sex: str, methods: list[str],
                    optionsText: str = "", choices: list[MethodChoice] | None = None
                    ) -> list[str]:
    """What keeps a run from starting, in words for the Apply button's tooltip (empty: ready).
    `choices` (default: methodChoices()) says which methods have a model."""
    problems = []
    if not hasInput:
        problems.append("choose an input volume")
    if age is None or not 0 <= age <= 120:
        problems.append("enter the age (0-120 years)")
    if sex not in ("F", "M"):
        problems.append("choose the sex (F or M)")
    available = {choice.name: choice.available for choice in choices or methodChoices()}
    if not methods:
        problems.append("select at least one method")
    for method in methods:
        if method not in available:
            problems.append(f"{method} is not a NeuroAD method")
        elif not available[method]:
            problems.append(f"install a model for {method} (Models section)")
    try:
        parseOptions(optionsText)
    except ValueError as error:
        problems.append(str(error))
    return problems


def isLongitudinal(methods: list[str]) -> bool:
    """Whether the selection is one longitudinal method (which reads a patient's visits)."""
    return len(methods) == 1 and methods[0] in registry().LONGITUDINAL_METHODS


def visitProblems(ages: list[float | None], followUpsChosen: list[bool]) -> list[str]:
    """What keeps a longitudinal run from starting, beyond the first visit's own inputs:
    `ages` of every visit (the first is the input's), whether each follow-up has its volume."""
    problems = [f"choose the volume of visit {number}"
                for number, chosen in enumerate(followUpsChosen, start=2) if not chosen]
    problems += [f"enter the age of visit {number} (0-120 years)"
                 for number, age in enumerate(ages, start=1) if age is None or not 0 <= age <= 120]
    known = [age for age in ages if age is not None]
    if any(later < earlier for earlier, later in zip(known, known[1:], strict=False)):
        problems.append("give the visits in scan order (their ages must not go down)")
    return problems
