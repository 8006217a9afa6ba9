"""The loader of the methods that share one unconditional slice DDPM bundle (THOR and
AutoDDPM): the registry names one loader per family, and this one builds the method asked for."""

from __future__ import annotations

from pathlib import Path

from .autoddpm import AutoDDPMModel, load_autoddpm
from .thor import THORModel, load_thor

LOADERS = {"thor": load_thor, "autoddpm": load_autoddpm}


def load_ddpm_baseline(folder: str | Path, name: str, options: dict | None = None
                       ) -> THORModel | AutoDDPMModel:
    if name not in LOADERS:
        raise ValueError(f"The DDPM bundle serves {', '.join(LOADERS)}, not {name!r}.")
    return LOADERS[name](folder, name, options)
