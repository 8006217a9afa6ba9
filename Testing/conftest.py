"""Shared fixtures: the real data beside the repository and small synthetic volumes."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("NEUROAD_SHARED_DATA", REPO.parent / "shared" / "data"))
IXI = SHARED_DATA / "ixi_t1_2mm"
IXI_SCAN = IXI / "IXI012-HH-1211_T1.nii.gz"
MS_T1 = SHARED_DATA / "lesions" / "ms_patient19" / "t1.nii.gz"
CLINICAL_T1 = SHARED_DATA / "clinical_raw" / "tcga_fg_6692" / "t1.nii.gz"


def require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data not found at {path} (set NEUROAD_SHARED_DATA)")
    return path


@pytest.fixture(scope="session", autouse=True)
def _two_threads():
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(2)


def oblique_image(size=(40, 36, 24), spacing=(1.1, 0.9, 2.5), seed=0) -> sitk.Image:
    """A random float volume with an oblique direction, odd origin and anisotropic spacing."""
    rng = np.random.default_rng(seed)
    image = sitk.GetImageFromArray(rng.normal(100, 20, tuple(reversed(size))).astype(np.float32))
    rotation = sitk.VersorTransform((0.2, -0.1, 0.3), 0.4).GetMatrix()
    image.SetDirection(rotation)
    image.SetSpacing(spacing)
    image.SetOrigin((-12.5, 30.25, -7.0))
    return image


def ellipsoid_brain(shape: tuple[int, int, int]) -> np.ndarray:
    grids = np.indices(shape)
    centre = np.array(shape)[:, None, None, None] / 2
    radii = np.array(shape)[:, None, None, None] * 0.4
    return (((grids - centre) / radii) ** 2).sum(0) < 1


def healthy_volume(shape: tuple[int, int, int], seed: int) -> np.ndarray:
    """A smooth fake 'brain' shared by all subjects plus subject-specific smooth noise."""
    smooth = ndimage.gaussian_filter(np.random.default_rng(99).random(shape), 2)
    anatomy = 0.6 + 4.0 * (smooth - smooth.mean())  # about 0.4 to 0.8: nothing saturates
    noise = ndimage.gaussian_filter(np.random.default_rng(seed).normal(0, 0.05, shape), 1)
    return (np.clip(anatomy + noise, 0, 1) * ellipsoid_brain(shape)).astype(np.float32)


def fabricated_cohort(root: Path, shape: tuple[int, int, int], n: int) -> Path:
    """A prepared-cohort folder (cohort.csv + grid images and masks) of `n` fake subjects,
    every fourth in validation."""
    (root / "subjects").mkdir(parents=True)
    rows = []
    for k in range(n):
        image = sitk.GetImageFromArray(healthy_volume(shape, k))
        sitk.WriteImage(image, str(root / "subjects" / f"s{k}_image.nii.gz"))
        mask = sitk.GetImageFromArray(ellipsoid_brain(shape).astype(np.uint8))
        sitk.WriteImage(mask, str(root / "subjects" / f"s{k}_mask.nii.gz"))
        rows.append({"subject": f"s{k}", "age": str(20 + 4 * k), "sex": "F", "file": "",
                     "split": "validation" if k % 4 == 0 else "train",
                     "image": f"subjects/s{k}_image.nii.gz",
                     "brain_mask": f"subjects/s{k}_mask.nii.gz", "brain_volume_ml": "1",
                     "ncc_with_template": "1", "status": "ok"})
    with (root / "cohort.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


TINY_CADD_SHAPE = (32, 32, 32)


def _quiet(message: str) -> None:
    return None


def tiny_cadd_stages(root: Path) -> tuple[Path, Path]:
    """A fabricated cohort of 8 subjects (32^3) and the tiny autoencoder trained on it for two
    steps: the first stage of a tiny CADD bundle."""
    from NeuroADLib.training.autoencoder import AutoencoderTraining, train_autoencoder

    cohort = fabricated_cohort(root / "cohort", TINY_CADD_SHAPE, 8)
    autoencoder = train_autoencoder(cohort, root / "ae", "tiny",
                                    AutoencoderTraining(steps=2, patch=32, adversarial_start=5),
                                    log=_quiet)
    return cohort, autoencoder


def tiny_cadd_bundle(root: Path, cohort: Path, autoencoder: Path,
                     variants: list[str] | None = None) -> Path:
    """A CADD bundle (root/cadd) of the tiny transformer trained for two steps on top of
    `tiny_cadd_stages`, calibrated at t_int 100 with respacing 10: seconds on 2 cores."""
    from NeuroADLib.methods.cadd import CADDSettings
    from NeuroADLib.training.cadd_bundle import build_cadd_bundle
    from NeuroADLib.training.latent_diffusion import (
        LatentDiffusionTraining,
        train_latent_diffusion,
    )

    transformer = train_latent_diffusion(cohort, autoencoder, root / "transformer", "tiny",
                                         LatentDiffusionTraining(steps=2, batch_size=2),
                                         log=_quiet)
    return build_cadd_bundle(cohort, autoencoder, transformer, root / "cadd",
                             CADDSettings(t_int=100, respacing=10), variants=variants,
                             log=_quiet)


def tiny_mad_ad_training():
    """MAD-AD's tiny networks trained for two steps per stage, checkpointed every step, run
    with every latent position updated (an untrained mask head flags next to nothing)."""
    from NeuroADLib.methods.mad_ad import MADADSettings
    from NeuroADLib.training.mad_ad import (
        MADADTraining,
        MaskedDiffusionTraining,
        SliceAutoencoderTraining,
    )

    return MADADTraining(config="tiny",
                         autoencoder=SliceAutoencoderTraining(steps=2, batch_size=4,
                                                              adversarial_start=1),
                         diffusion=MaskedDiffusionTraining(steps=2, batch_size=4),
                         inference=MADADSettings(mask_threshold=0.0),
                         acquisition_copies=1, checkpoint_every=1, log_every=1)


def tiny_mad_ad_bundle(root: Path) -> tuple[Path, Path]:
    """A fabricated cohort of 8 subjects (32^3) and a MAD-AD bundle (root/mad_ad) of
    `tiny_mad_ad_training` on it."""
    from NeuroADLib.training.mad_ad import train_mad_ad

    cohort = fabricated_cohort(root / "cohort", TINY_CADD_SHAPE, 8)
    return cohort, train_mad_ad(cohort, root / "mad_ad", tiny_mad_ad_training(), log=_quiet)


def tiny_cddpm_training():
    """cDDPM's tiny network trained for two steps, checkpointed every step, run with two
    noise levels and a 3^3 median filter."""
    from NeuroADLib.methods.cddpm import CDDPMSettings
    from NeuroADLib.training.cddpm import CDDPMTraining

    return CDDPMTraining(config="tiny", steps=2, batch_size=4,
                         inference=CDDPMSettings(levels=2, median_size=3, erosion=1),
                         acquisition_copies=1, checkpoint_every=1, log_every=1)


def tiny_cddpm_bundle(root: Path) -> tuple[Path, Path]:
    """A fabricated cohort of 8 subjects (32^3) and a cDDPM bundle (root/cddpm) of
    `tiny_cddpm_training` on it."""
    from NeuroADLib.training.cddpm import train_cddpm

    cohort = fabricated_cohort(root / "cohort", TINY_CADD_SHAPE, 8)
    return cohort, train_cddpm(cohort, root / "cddpm", tiny_cddpm_training(), log=_quiet)


def tiny_ddpm_training():
    """The shared slice DDPM's tiny network trained for two steps, checkpointed every step;
    THOR and AutoDDPM run on chains of a few levels with a 3^3 median filter."""
    from NeuroADLib.methods.autoddpm import AutoDDPMSettings
    from NeuroADLib.methods.thor import THORSettings
    from NeuroADLib.training.image_ddpm import ImageDDPMTraining

    return ImageDDPMTraining(
        config="tiny", steps=2, batch_size=4,
        thor=THORSettings(stride=50, closing_size=3, median_size=3, erosion=1),
        autoddpm=AutoDDPMSettings(t_coarse=100, t_inpaint=50, resample=2, stride=50,
                                  median_size=3, erosion=1),
        acquisition_copies=1, checkpoint_every=1, log_every=1)


def tiny_ddpm_bundle(root: Path) -> tuple[Path, Path]:
    """A fabricated cohort of 8 subjects (32^3) and a THOR/AutoDDPM bundle (root/ddpm) of
    `tiny_ddpm_training` on it."""
    from NeuroADLib.training.image_ddpm import train_image_ddpm

    cohort = fabricated_cohort(root / "cohort", TINY_CADD_SHAPE, 8)
    return cohort, train_image_ddpm(cohort, root / "ddpm", tiny_ddpm_training(), log=_quiet)


def tiny_sdm_training():
    """SDM's tiny network and FAM's extractor trained for two steps each, checkpointed every
    step, run with two DDIM steps each way and a 3^3 median filter."""
    from NeuroADLib.methods.sdm import SDMSettings
    from NeuroADLib.training.sdm import FAMTraining, SDMTraining

    return SDMTraining(config="tiny", steps=2, batch_size=4,
                       fam=FAMTraining(pairs=8, steps=2, batch_size=4),
                       inference=SDMSettings(steps=2, median_size=3, erosion=1),
                       acquisition_copies=1, checkpoint_every=1, log_every=1)


def tiny_sdm_bundle(root: Path) -> tuple[Path, Path]:
    """A fabricated cohort of 8 subjects (32^3) and an SDM bundle (root/sdm) of
    `tiny_sdm_training` on it."""
    from NeuroADLib.training.sdm import train_sdm

    cohort = fabricated_cohort(root / "cohort", TINY_CADD_SHAPE, 8)
    return cohort, train_sdm(cohort, root / "sdm", tiny_sdm_training(), log=_quiet)


def tiny_cond_ldm_training():
    """The conditioned LDM's tiny UNet trained for two steps on two pseudo-pathological versions
    per scan, run from t_int 50 with respacing 10 and a small median filter."""
    from NeuroADLib.methods.cond_ldm import CondLDMSettings
    from NeuroADLib.training.cond_ldm import CondLDMTraining
    from NeuroADLib.training.pathology_pairs import PairSettings

    return CondLDMTraining(config="tiny", steps=2, batch_size=2, acquisition_copies=1,
                           pairs=PairSettings(versions=2),
                           inference=CondLDMSettings(t_int=50, respacing=10, samples=1,
                                                     median_size=3, erosion=1),
                           checkpoint_every=1, log_every=1)


def tiny_cond_ldm_bundle(root: Path) -> tuple[Path, Path]:
    """A fabricated cohort of 8 subjects (32^3), the tiny first stage of `tiny_cadd_stages`
    and a conditioned-LDM bundle (root/cond_ldm) of `tiny_cond_ldm_training` on them."""
    from NeuroADLib.training.cond_ldm import train_cond_ldm

    cohort, autoencoder = tiny_cadd_stages(root)
    return cohort, train_cond_ldm(cohort, autoencoder, root / "cond_ldm",
                                  tiny_cond_ldm_training(), log=_quiet)


def tiny_grid_sdm_store(root: Path) -> Path:
    """A model store (root/store, for NEUROAD_MODELS) holding an SDM bundle of SDM's tiny
    networks trained for one step on a fabricated cohort on the product grid, run with one
    DDIM step each way: real runs of the longitudinal method in seconds."""
    from NeuroADLib.grid import GridSpec
    from NeuroADLib.methods.sdm import SDMSettings
    from NeuroADLib.training.sdm import FAMTraining, SDMTraining, train_sdm

    cohort = fabricated_cohort(root / "cohort", GridSpec().shape[::-1], 8)
    training = SDMTraining(config="tiny", steps=1, batch_size=2,
                           fam=FAMTraining(pairs=4, steps=1, batch_size=2),
                           inference=SDMSettings(steps=1, median_size=3, erosion=1),
                           acquisition_copies=0, checkpoint_every=1, log_every=1)
    train_sdm(cohort, root / "store" / "sdm", training, log=_quiet)
    return root / "store"
