"""Who a scan is of, as every method sees it (torch-free)."""

from __future__ import annotations

from dataclasses import dataclass

SEXES = ("F", "M")


@dataclass(frozen=True)
class Subject:
    """The person a scan is of: age in years (at that scan) and sex ("F" / "M"); None where
    unknown. The field names are those `MethodInfo.covariates` lists; a method conditions on
    what is known. A longitudinal run has one Subject per visit (longitudinal.run_visits).
    Whether a covariate is plausible (an age within 0-120) is checked where users give it
    (`pipeline.check_covariates`).
    """

    age: float | None = None
    sex: str | None = None

    def __post_init__(self) -> None:
        if self.sex is not None and self.sex not in SEXES:
            raise ValueError(f"Sex must be F, M or unknown (None), not {self.sex!r}.")


UNKNOWN = Subject()  # a subject of whom nothing is known (methods run without covariates)
