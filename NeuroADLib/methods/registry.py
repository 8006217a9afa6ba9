"""The one list of methods (torch-free, so the GUI and the command line start fast): what each
method is, the function that loads it from its bundle (an import string), the contrast and
covariates it uses, the options it takes with their defaults, and each option's type and valid
range (`validate_options`).

Nothing here imports the rest of the package (the Slicer module loads this file alone), so an
invalid option is a ValueError; the engine's entry points turn it into an OptionError.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# CADD's inference knobs and the paper's defaults (cadd.CADDSettings mirrors them; a test
# keeps the two equal).
CADD_OPTIONS = {"t_int": 250, "level_step": 50, "percentile": 95.0, "respacing": 1, "seed": 42,
                "against_reconstruction": 1, "gaussian_sigma": 0.0, "erosion": 0}
# CADD's diffusion chain has this many noise levels (GaussianDiffusion.num_timesteps).
CADD_TIMESTEPS = 1000


@dataclass(frozen=True)
class OptionSpec:
    """An option's type (int or float) and valid range: `low` to `high` inclusive, or exclusive
    when `open_range`."""

    kind: type
    low: float
    high: float
    open_range: bool = False

    def describe(self) -> str:
        kind = "an integer" if self.kind is int else "a number"
        low, high = (str(int(bound)) if self.kind is int else f"{bound:g}"
                     for bound in (self.low, self.high))
        if self.open_range:
            return f"{kind} between {low} and {high} (both excluded)"
        return f"{kind} from {low} to {high}"

    def check(self, key: str, value: object) -> int | float:
        """The value as the option's type; ValueError naming the valid range otherwise."""
        number = value
        if isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                number = None
        if isinstance(number, bool) or not isinstance(number, int | float):
            raise ValueError(f"Option {key}={value!r} is not a number: it must be "
                             f"{self.describe()}.")
        if self.kind is int and not float(number).is_integer():
            raise ValueError(f"Option {key}={value!r} is not an integer: it must be "
                             f"{self.describe()}.")
        inside = (self.low < number < self.high if self.open_range
                  else self.low <= number <= self.high)
        if not inside:
            raise ValueError(f"Option {key}={value!r} is out of range: it must be "
                             f"{self.describe()}.")
        return self.kind(number)


CADD_OPTION_SPECS = {
    "t_int": OptionSpec(int, 1, CADD_TIMESTEPS),
    "level_step": OptionSpec(int, 1, CADD_TIMESTEPS),
    "percentile": OptionSpec(float, 0, 100, open_range=True),
    "respacing": OptionSpec(int, 1, CADD_TIMESTEPS),
    "seed": OptionSpec(int, 0, 2**32 - 1),
    "against_reconstruction": OptionSpec(int, 0, 1),
    "gaussian_sigma": OptionSpec(float, 0, 5),
    "erosion": OptionSpec(int, 0, 10),
}


@dataclass(frozen=True)
class MethodInfo:
    """A method: its `family` (the methods one bundle and one loader serve), the `loader` that
    builds its model from a bundle folder ("package.module:function", called as
    `function(folder, name, options)`; see `methods.base.load_method`), the `covariates` it
    conditions on (`Subject` field names), its `options` with their defaults and specs, the
    stem of its `calibration` files in the bundle, the options added since bundles of it
    were first written (`unrecorded`), with the value a bundle that does not record them ran
    and was calibrated at, and the map it always outputs (`map_kind`; None: the one its
    calibration chose), for a method that shares another's calibration but not its map."""

    name: str
    description: str
    family: str
    loader: str
    contrast: str = "t1"
    covariates: tuple[str, ...] = ()
    options: dict = field(default_factory=dict)
    option_specs: dict = field(default_factory=dict)
    calibration: str = "calibration"
    unrecorded: dict = field(default_factory=dict)
    map_kind: str | None = None


# MAD-AD's inference knobs and the paper's defaults (MADADSettings mirrors them; a test keeps
# the two equal). Its diffusion has T = 10 levels.
MAD_AD_OPTIONS = {"steps": 10, "eta": 0.5, "gamma": 0.25, "smoothing_sigma_mm": 4.0,
                  "mask_threshold": 0.5, "seed": 42}
MAD_AD_OPTION_SPECS = {
    "steps": OptionSpec(int, 1, 10),
    "eta": OptionSpec(float, 0, 1),
    "gamma": OptionSpec(float, 0, 1, open_range=True),
    "smoothing_sigma_mm": OptionSpec(float, 0, 20),
    "mask_threshold": OptionSpec(float, 0, 1),
    "seed": OptionSpec(int, 0, 2**32 - 1),
}

# cDDPM's inference knobs and the paper's defaults (CDDPMSettings mirrors them; a test keeps
# the two equal). Its diffusion has T = 1000 levels.
CDDPM_OPTIONS = {"t_min": 250, "t_max": 750, "levels": 3, "draws": 1, "median_size": 5,
                 "gaussian_sigma": 0.0, "erosion": 3, "seed": 42}
CDDPM_OPTION_SPECS = {
    "t_min": OptionSpec(int, 0, 999),
    "t_max": OptionSpec(int, 0, 999),
    "levels": OptionSpec(int, 1, 10),
    "draws": OptionSpec(int, 1, 16),
    "median_size": OptionSpec(int, 1, 9),
    "gaussian_sigma": OptionSpec(float, 0, 5),
    "erosion": OptionSpec(int, 0, 10),
    "seed": OptionSpec(int, 0, 2**32 - 1),
}

# The pathology-conditioned LDM's inference knobs and the paper's defaults (CondLDMSettings
# mirrors them; a test keeps the two equal), but for two 0/1 switches, `minmax` (1: the paper's
# per-map min-max normalisation) and `against_reconstruction` (1, the default: the map against
# the autoencoder's own reconstruction of the scan; 0: against the scan, as the paper), and the
# chain: 4 chains of every 5th level, averaged (measured better than the paper's one full chain,
# `respacing` 1 and `samples` 1, at 200 network evaluations instead of 250). T = 1000.
COND_LDM_OPTIONS = {"t_int": 250, "respacing": 5, "ancestral": 1, "samples": 4,
                    "max_shift": 2, "median_size": 5, "gaussian_sigma": 0.0, "erosion": 3,
                    "minmax": 0, "against_reconstruction": 1, "seed": 42}
COND_LDM_OPTION_SPECS = {
    "t_int": OptionSpec(int, 1, 1000),
    "respacing": OptionSpec(int, 1, 1000),
    "ancestral": OptionSpec(int, 0, 1),
    "samples": OptionSpec(int, 1, 16),
    "max_shift": OptionSpec(int, 0, 4),
    "median_size": OptionSpec(int, 1, 9),
    "gaussian_sigma": OptionSpec(float, 0, 5),
    "erosion": OptionSpec(int, 0, 10),
    "minmax": OptionSpec(int, 0, 1),
    "against_reconstruction": OptionSpec(int, 0, 1),
    "seed": OptionSpec(int, 0, 2**32 - 1),
}

# THOR's and AutoDDPM's inference knobs (THORSettings and AutoDDPMSettings mirror them; a test
# keeps them equal): the papers' defaults, except the chains, respaced to every 50th level
# with deterministic DDIM steps for 2 CPU cores (stride 1 and eta 1 are the papers' chains).
# Their DDPM has T = 1000 levels.
THOR_OPTIONS = {"t_start": 350, "stride": 50, "eta": 0.0, "closing_size": 13,
                "median_size": 5, "erosion": 3, "seed": 42}
THOR_OPTION_SPECS = {
    "t_start": OptionSpec(int, 300, 999),
    "stride": OptionSpec(int, 1, 50),
    "eta": OptionSpec(float, 0, 1),
    "closing_size": OptionSpec(int, 1, 31),
    "median_size": OptionSpec(int, 1, 9),
    "erosion": OptionSpec(int, 0, 10),
    "seed": OptionSpec(int, 0, 2**32 - 1),
}
AUTODDPM_OPTIONS = {"t_coarse": 200, "t_inpaint": 50, "resample": 4, "percentile": 95.0,
                    "stride": 50, "eta": 0.0, "median_size": 5, "erosion": 3, "seed": 42}
AUTODDPM_OPTION_SPECS = {
    "t_coarse": OptionSpec(int, 1, 999),
    "t_inpaint": OptionSpec(int, 1, 999),
    "resample": OptionSpec(int, 1, 20),
    "percentile": OptionSpec(float, 0, 100, open_range=True),
    "stride": OptionSpec(int, 1, 100),
    "eta": OptionSpec(float, 0, 1),
    "median_size": OptionSpec(int, 1, 9),
    "erosion": OptionSpec(int, 0, 10),
    "seed": OptionSpec(int, 0, 2**32 - 1),
}
# THOR's fixed harmonisation levels (the paper's; methods/thor.py uses them): the stride must
# land on them.
THOR_HARMONISATION_LEVELS = (300, 150, 50)


def thor_skipped_levels(t_start: int, stride: int) -> list[int]:
    """The harmonisation levels a THOR chain from `t_start` with `stride` would not visit."""
    return [t for t in THOR_HARMONISATION_LEVELS if (t_start - t) % stride]

# SDM's and FAM's inference knobs (SDMSettings mirrors them; a test keeps them equal): the
# report's, but for the DDIM step count (100 in the report, 10 for 2 CPU cores). T = 1000.
SDM_OPTIONS = {"noise_level": 250, "steps": 10, "pixel_weight": 1.0, "median_size": 5,
               "erosion": 3, "seed": 42}
SDM_OPTION_SPECS = {
    "noise_level": OptionSpec(int, 1, 999),
    "steps": OptionSpec(int, 1, 999),
    "pixel_weight": OptionSpec(float, 0, 100),
    "median_size": OptionSpec(int, 1, 9),
    "erosion": OptionSpec(int, 0, 10),
    "seed": OptionSpec(int, 0, 2**32 - 1),
}

# FAM's score (eq. 3.5) adds where its maxima are taken: 1, the brain eroded as the
# post-processing erodes it (the default: measured quieter on other acquisitions at the same
# AP); 0, the whole brain, as bundles that do not record the option ran.
SDM_FAM_OPTIONS = {**SDM_OPTIONS, "scale_in_eroded_brain": 1}
SDM_FAM_OPTION_SPECS = {**SDM_OPTION_SPECS, "scale_in_eroded_brain": OptionSpec(int, 0, 1)}
SDM_FAM_UNRECORDED = {"scale_in_eroded_brain": 0}

# The longitudinal method adds LAFM's knobs (eq. 3.7-3.8, the report's beta and gamma; sigma in
# years of visit time) and TDM imputation: with impute_every Y > 0, where two visits are more
# than Y years apart, visits every Y years between them are imputed by TDM and fused as LAFM
# references (0: off).
LONGITUDINAL_OPTIONS = {**SDM_FAM_OPTIONS, "lafm_sigma": 2.5, "lafm_beta": 1.0, "lafm_gamma": 0.1,
                        "impute_every": 0.0}
LONGITUDINAL_OPTION_SPECS = {**SDM_FAM_OPTION_SPECS, "lafm_sigma": OptionSpec(float, 0, 100),
                             "lafm_beta": OptionSpec(float, 0, 1),
                             "lafm_gamma": OptionSpec(float, 0, 10),
                             "impute_every": OptionSpec(float, 0, 50)}
# TDM's sampling knobs (TDMSettings mirrors them; a test keeps them equal): DDIM steps from
# level T - 1 (T = 1000), eta, seed. TDM imputes scans (`neuroad impute`); it is not an
# anomaly method, so it is not in METHODS.
TDM_OPTIONS = {"steps": 20, "eta": 0.0, "seed": 42}
TDM_OPTION_SPECS = {"steps": OptionSpec(int, 1, 1000), "eta": OptionSpec(float, 0, 1),
                    "seed": OptionSpec(int, 0, 2**32 - 1)}
# Methods that read several visits of one patient (`neuroad run V1 V2 ...`).
LONGITUDINAL_METHODS = ("longitudinal",)

ZSCORE_LOADER = "NeuroADLib.methods.zscore:load_zscore"
CADD_LOADER = "NeuroADLib.methods.cadd:load_cadd"
DDPM_LOADER = "NeuroADLib.methods.ddpm_baselines:load_ddpm_baseline"
SDM_LOADER = "NeuroADLib.methods.sdm:load_sdm"


def _cadd(name: str, description: str, covariates: tuple[str, ...] = ()) -> MethodInfo:
    """A method of the CADD bundle: CADD's options, its own calibration in the bundle."""
    return MethodInfo(name, description, "cadd", CADD_LOADER, covariates=covariates,
                      options=CADD_OPTIONS, option_specs=CADD_OPTION_SPECS,
                      calibration=f"calibration_{name}",
                      unrecorded={"gaussian_sigma": 0.0, "erosion": 0})


METHODS = {
    "zscore": MethodInfo("zscore", "Voxel-wise normative intensity model: |z| against healthy "
                         "subjects of the same age (classical baseline).", "zscore",
                         ZSCORE_LOADER, covariates=("age",)),
    "cadd": _cadd("cadd", "CADD: conditional latent diffusion with KL-guided inpainting "
                  "(Algorithm 1), normative for age and sex.", ("age", "sex")),
    "cadd_nocov": _cadd("cadd_nocov", "CADD without covariates (ablation)."),
    "cadd_noinpaint": _cadd("cadd_noinpaint", "CADD without inpainting: average of "
                            "reconstructions over noise levels (ablation).", ("age", "sex")),
    "ldm": _cadd("ldm", "Latent diffusion reconstruction from T_int (baseline)."),
    "ldm_tavg": _cadd("ldm_tavg", "Latent diffusion averaged over noise levels (baseline)."),
    "cond_ldm": MethodInfo("cond_ldm", "Pathology-conditioned LDM: a latent DDPM conditioned "
                           "on an encoding of the scan itself, trained to turn copies of healthy "
                           "scans with fluid-driven pseudo-pathologies back into the healthy "
                           "scans; reconstructs from T_int = 250.", "cond_ldm",
                           "NeuroADLib.methods.cond_ldm:load_cond_ldm",
                           options=COND_LDM_OPTIONS, option_specs=COND_LDM_OPTION_SPECS,
                           calibration="calibration_cond_ldm",
                           unrecorded={"samples": 1, "gaussian_sigma": 0.0}),
    "mad_ad": MethodInfo("mad_ad", "MAD-AD: masked latent diffusion on axial slices; the mask "
                         "head finds anomalous latent patches and only those are denoised.",
                         "mad_ad", "NeuroADLib.methods.mad_ad:load_mad_ad",
                         options=MAD_AD_OPTIONS, option_specs=MAD_AD_OPTION_SPECS,
                         calibration="calibration_mad_ad"),
    "cddpm": MethodInfo("cddpm", "cDDPM: a DDPM on axial slices conditioned on an encoding of "
                        "the clean input; one-step reconstructions from simplex noise at "
                        "three levels, averaged.", "cddpm",
                        "NeuroADLib.methods.cddpm:load_cddpm", options=CDDPM_OPTIONS,
                        option_specs=CDDPM_OPTION_SPECS, calibration="calibration_cddpm",
                        unrecorded={"gaussian_sigma": 0.0}),
    "thor": MethodInfo("thor", "THOR: a DDPM on axial slices from t = 350 whose clean-image "
                       "estimates are blended with the input by their anomaly maps at "
                       "t = 300, 150, 50; map: harmonic mean of those maps.", "ddpm",
                       DDPM_LOADER, options=THOR_OPTIONS,
                       option_specs=THOR_OPTION_SPECS, calibration="calibration_thor"),
    "autoddpm": MethodInfo("autoddpm", "AutoDDPM: coarse DDPM reconstruction from t = 200, a "
                           "mask of its largest residuals, and RePaint re-sampling of the "
                           "masked region from t = 50.", "ddpm",
                           DDPM_LOADER,
                           options=AUTODDPM_OPTIONS, option_specs=AUTODDPM_OPTION_SPECS,
                           calibration="calibration_autoddpm"),
    "sdm": MethodInfo("sdm", "SDM: a DDIM conditioned on a semantic code of the slice; the "
                      "scan DDIM-inverted to t = 250 and decoded; map: |x - x_hat| "
                      "(single-visit ablation of the longitudinal method).", "sdm", SDM_LOADER,
                      options=SDM_OPTIONS, option_specs=SDM_OPTION_SPECS,
                      calibration="calibration_sdm"),
    "sdm_fam": MethodInfo("sdm_fam", "SDM + FAM: SDM's pixel distance plus the feature "
                          "distance of a fine-tuned encoder (single-visit ablation of the "
                          "longitudinal method).", "sdm", SDM_LOADER, options=SDM_FAM_OPTIONS,
                          option_specs=SDM_FAM_OPTION_SPECS, calibration="calibration_sdm_fam",
                          unrecorded=SDM_FAM_UNRECORDED),
    "longitudinal": MethodInfo("longitudinal", "Longitudinal (SDM + FAM + LAFM): each visit's "
                               "SDM + FAM map fused with the patient's other visits (weighted "
                               "by the time between them), segmented per patient by Yen's "
                               "threshold; one visit: SDM + FAM.", "sdm", SDM_LOADER,
                               options=LONGITUDINAL_OPTIONS,
                               option_specs=LONGITUDINAL_OPTION_SPECS,
                               calibration="calibration_sdm_fam",
                               unrecorded=SDM_FAM_UNRECORDED,
                               # LAFM fuses SDM + FAM's raw scores, whichever map sdm_fam outputs
                               map_kind="raw"),
}


def method_names() -> list[str]:
    return list(METHODS)


def changed_options(name: str, options: dict | None, calibrated_at: dict | None = None
                    ) -> dict:
    """The options that differ from those the method's calibration was computed with: the
    method's defaults, but for `calibrated_at` (those the bundle records otherwise)."""
    calibrated = {**METHODS[name].options, **(calibrated_at or {})}
    return {key: value for key, value in (options or {}).items()
            if calibrated.get(key) != value}


def validate_options(name: str, options: dict | None) -> dict:
    """A method's options checked against their specs (known name, type, range, and the rules
    between options), returned as their types; ValueError saying what is valid otherwise."""
    if name not in METHODS:
        raise ValueError(f"Options for {name!r}, which is not a method; methods: "
                         f"{', '.join(METHODS)}.")
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise ValueError(f"The options of {name} must be a mapping of option names to values, "
                         f"not {options!r}.")
    specs = METHODS[name].option_specs
    checked = {}
    for key, value in options.items():
        if key not in specs:
            known = ", ".join(f"{name}.{option}" for option in specs) or "none"
            raise ValueError(f"{name} has no option {key}; its options: {known}.")
        checked[key] = specs[key].check(f"{name}.{key}", value)
    if METHODS[name].family == "cadd":
        merged = {**METHODS[name].options, **checked}
        if merged["level_step"] > merged["t_int"]:
            raise ValueError(f"{name}.level_step={merged['level_step']} is above "
                             f"{name}.t_int={merged['t_int']}: level_step must be at most t_int.")
        if merged["level_step"] % merged["respacing"]:
            raise ValueError(f"{name}.respacing={merged['respacing']} does not divide "
                             f"{name}.level_step={merged['level_step']}: choose a divisor "
                             "(e.g. 1, 5, 10 or 25 for level_step 50).")
    if METHODS[name].family == "cddpm":
        merged = {**METHODS[name].options, **checked}
        if merged["t_min"] > merged["t_max"]:
            raise ValueError(f"{name}.t_min={merged['t_min']} is above "
                             f"{name}.t_max={merged['t_max']}: t_min must be at most t_max.")
    if METHODS[name].family == "sdm":
        merged = {**METHODS[name].options, **checked}
        if merged["steps"] > merged["noise_level"]:
            raise ValueError(f"{name}.steps={merged['steps']} is above "
                             f"{name}.noise_level={merged['noise_level']}: at most one DDIM "
                             "step per noise level.")
    if name == "thor":
        merged = {**METHODS[name].options, **checked}
        missed = thor_skipped_levels(merged["t_start"], merged["stride"])
        if missed:
            raise ValueError(f"thor.stride={merged['stride']} skips the harmonisation levels "
                             f"{missed} from thor.t_start={merged['t_start']}: choose a stride "
                             "that divides t_start - 300, t_start - 150 and t_start - 50.")
    if name == "autoddpm":
        merged = {**METHODS[name].options, **checked}
        if merged["t_inpaint"] > merged["t_coarse"]:
            raise ValueError(f"autoddpm.t_inpaint={merged['t_inpaint']} is above "
                             f"autoddpm.t_coarse={merged['t_coarse']}: re-sampling starts at or "
                             "below the coarse level.")
    return checked
