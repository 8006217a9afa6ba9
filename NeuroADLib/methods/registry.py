"""The one list of methods (torch-free, so the GUI and the command line start fast): what each
method is, the contrast and covariates it uses, and the options it takes with their defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# CADD's inference knobs and the paper's defaults (InpaintingSettings mirrors them; a test
# keeps the two equal).
CADD_OPTIONS = {"t_int": 250, "level_step": 50, "percentile": 95.0, "respacing": 1, "seed": 42}


@dataclass(frozen=True)
class MethodInfo:
    name: str
    description: str
    family: str
    contrast: str = "t1"
    covariates: tuple[str, ...] = ()
    options: dict = field(default_factory=dict)


METHODS = {
    "zscore": MethodInfo("zscore", "Voxel-wise normative intensity model: |z| against healthy "
                         "subjects of the same age (classical baseline).", "zscore",
                         covariates=("age",)),
    "cadd": MethodInfo("cadd", "CADD: conditional latent diffusion with KL-guided inpainting "
                       "(Algorithm 1), normative for age and sex.", "cadd",
                       covariates=("age", "sex"), options=CADD_OPTIONS),
    "cadd_nocov": MethodInfo("cadd_nocov", "CADD without covariates (ablation).", "cadd",
                             options=CADD_OPTIONS),
    "cadd_noinpaint": MethodInfo("cadd_noinpaint", "CADD without inpainting: average of "
                                 "reconstructions over noise levels (ablation).", "cadd",
                                 covariates=("age", "sex"), options=CADD_OPTIONS),
    "ldm": MethodInfo("ldm", "Latent diffusion reconstruction from T_int (baseline).", "cadd",
                      options=CADD_OPTIONS),
    "ldm_tavg": MethodInfo("ldm_tavg", "Latent diffusion averaged over noise levels "
                           "(baseline).", "cadd", options=CADD_OPTIONS),
}


def method_names() -> list[str]:
    return list(METHODS)


def changed_options(name: str, options: dict | None) -> dict:
    """The options that differ from the method's defaults (those its bundled calibration was
    computed with)."""
    defaults = METHODS[name].options
    return {key: value for key, value in (options or {}).items() if defaults.get(key) != value}
