"""Who a scan is of, as every method sees it (torch-free)."""

from __future__ import annotations

from dataclasses import dataclass

SEXES = ("F", "M")


@dataclass(frozen=True)
class Subject:
    """The person a scan is of: age in years, sex ("F" / "M"), and earlier visits for the
    longitudinal methods; None (or no visits) where unknown. The field names are those
    `MethodInfo.covariates` lists; a method conditions on what is known. Whether a covariate is
    plausible (an age within 0-120) is checked where users give it (`pipeline.check_covariates`).
    """

    age: float | None = None
    sex: str | None = None
    prior_visits: tuple = ()

    def __post_init__(self) -> None:
        if self.sex is not None and self.sex not in SEXES:
            raise ValueError(f"Sex must be F, M or unknown (None), not {self.sex!r}.")


UNKNOWN = Subject()  # a subject of whom nothing is known (methods run without covariates)
