"""The `neuroad` command line."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import sys
from pathlib import Path

from . import __version__
from .errors import (
    EXIT_CANCELLED,
    EXIT_INTERNAL,
    EXIT_OUT_OF_MEMORY,
    InputError,
    ModelError,
    NeuroADError,
    UsageError,
)
from .networks.autoencoder import AUTOENCODER_CONFIGS

DEMO_FOLDER = Path(__file__).parent / "data" / "demo"
DEMO_SCAN = DEMO_FOLDER / "tcga_fg_6692_t1.nii.gz"
DEMO_AGE, DEMO_SEX = 50.0, "F"  # illustrative: not distributed with the image

EXAMPLES = {
    "preprocess": "example:\n  neuroad preprocess scan.nii.gz --out scan_preprocessed\n"
                  "  neuroad preprocess stripped.nii.gz --skull-stripped --out out_dir",
    "prepare-cohort": "example:\n  neuroad prepare-cohort ../shared/data/ixi_t1_2mm "
                      "--cache ~/.neuroad/cohorts/ixi_2mm --workers 2",
    "demo": "example:\n  neuroad demo --out neuroad-demo",
    "run": "example:\n  neuroad run scan.nii.gz --age 54 --sex F --method zscore --out results"
           "\n  neuroad run v1.nii.gz v2.nii.gz v3.nii.gz --age 61.0 62.5 64.1 --sex F "
           "--method longitudinal --out results",
    "impute": "example:\n  neuroad impute v1.nii.gz --age 61 --to-age 63 --sex F --out v2_imputed",
    "batch": "example:\n  neuroad batch cases.csv --method zscore --out results\n"
             "  neuroad batch cases.csv --method zscore --out results --cluster local:2\n"
             "  neuroad batch cases.csv --method cadd --out results --device cuda "
             "--cluster slurm --cluster-config slurm.yaml\n"
             "  neuroad batch cases.csv --method zscore --out results --shard 0/4\n"
             "  (cases.csv: path,age,sex[,brain_mask,case])",
    "batch-merge": "example:\n  neuroad batch-merge cases.csv --out results",
    "models": "example:\n  neuroad models list\n  neuroad models verify\n"
              "  neuroad models import zscore-ixi-2mm.zip\n"
              "  neuroad models fetch https://host/model.zip --sha256 HEX",
    "train": "example:\n  neuroad train zscore --cohort ~/neuroad-cache/ixi_2mm "
             "--out models/zscore\n  neuroad train autoencoder --cohort ~/neuroad-cache/ixi_2mm "
             "--out models/autoencoder --config default\n"
             "  neuroad train transformer --cohort ~/neuroad-cache/ixi_2mm "
             "--autoencoder models/autoencoder --out models/transformer\n"
             "  neuroad train cadd --cohort ~/neuroad-cache/ixi_2mm "
             "--autoencoder models/autoencoder --transformer models/transformer --out models/cadd"
             "\n  neuroad train mad_ad --cohort ~/neuroad-cache/ixi_2mm --out models/mad_ad"
             "\n  neuroad train cddpm --cohort ~/neuroad-cache/ixi_2mm --out models/cddpm"
             "\n  neuroad train sdm --cohort ~/neuroad-cache/ixi_2mm --out models/sdm"
             "\n  neuroad train tdm --cohort ~/neuroad-cache/ixi_2mm --out models/tdm"
             "\n  neuroad train ddpm --cohort ~/neuroad-cache/ixi_2mm --out models/ddpm",
    "calibrate": "example:\n  neuroad calibrate cond_ldm --cohort ~/neuroad-cache/ixi_2mm "
                 "--out cond-ldm-recalibrated --option cond_ldm.samples=4\n"
                 "  neuroad calibrate zscore --cohort ~/site-controls --split all "
                 "--out zscore-site\n  neuroad models import zscore-site",
    "make-benchmarks": "example:\n  neuroad make-benchmarks --cohort ~/neuroad-cache/ixi_2mm "
                       "--lesions ../shared/data/lesions --out ~/neuroad-cache/benchmarks",
    "evaluate": "example:\n  neuroad evaluate --methods zscore "
                "--cases ~/neuroad-cache/benchmarks/synthetic/cases.csv --out results/synthetic"
                "\n  neuroad evaluate --methods cadd,ldm --cases synthetic_t1.npz --device cuda "
                "--out results/cadd",
    "pack": "example:\n  neuroad pack ~/neuroad-cache/ixi_2mm --out ixi_2mm.npz\n"
            "  neuroad pack ~/neuroad-cache/benchmarks/synthetic/cases.csv --contrast t1 "
            "--out synthetic_t1.npz",
    "synth": "example:\n  neuroad synth scan.nii.gz --out scan_lesioned --seed 3\n"
             "  neuroad synth grid_image.nii.gz --out out --contrast flair --library my_masks/",
}


def _whole_number(low: int, high: int):
    """An argparse type: a whole number from `low` to `high`, else a usage error saying so."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number from {low} to "
                                             f"{high}")
        return value

    return parse


SEED = _whole_number(0, 2**31 - 1)  # registration seeds are unsigned 32-bit, plus retries
COUNT = _whole_number(1, 2**31 - 1)


def EMA_DECAY(text: str) -> float:
    """An argparse type: a moving-average decay in [0, 1), else a usage error saying so."""
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a decay in [0, 1) (e.g. 0.999; 0 "
                                         "keeps the last weights)")
    return value


def RATIO(text: str) -> float:
    """An argparse type: a share in (0, 1], else a usage error saying so."""
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a share in (0, 1] (e.g. 0.4)")
    return value


def WIDTHS(text: str) -> tuple[int, ...]:
    """An argparse type: comma-separated positive channel widths, e.g. 64,128,128."""
    try:
        widths = tuple(int(part) for part in text.split(","))
    except ValueError:
        widths = ()
    if not widths or min(widths) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of channel widths (e.g. "
                                         "64,128,128)")
    return widths


def _threads(value: int | None) -> None:
    """ITK's thread count (all cores by default), and torch's when one is given."""
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(value or os.cpu_count() or 1)
    if value:
        import torch

        torch.set_num_threads(value)


def _preprocess(args: argparse.Namespace) -> int:
    from .guards import check_brain_mask, check_memory, check_scan
    from .outputs import check_writable
    from .preprocessing import preprocess, save_preprocessed

    check_writable(args.out)
    header = check_scan(args.input)
    if args.brain_mask:
        check_brain_mask(args.brain_mask, header)
    check_memory(header, [])
    _threads(args.threads)
    skull_stripped = True if args.skull_stripped else None
    result = preprocess(args.input, brain_mask=args.brain_mask, skull_stripped=skull_stripped,
                        seed=args.seed)
    save_preprocessed(result, args.out, title=Path(args.input).name)
    quality = result.report["quality"]
    print(f"wrote {args.out}: image.nii.gz, brain_mask.nii.gz, template_to_native.tfm, "
          f"preprocess.json, qc.png")
    print(f"brain volume {quality['brain_volume_ml']:.0f} mL, correlation with the template "
          f"{quality['ncc_with_template']:.2f}, total "
          f"{sum(result.report['timings_s'].values()):.1f} s")
    return 0


def _prepare_cohort(args: argparse.Namespace) -> int:
    from .cohort import prepare_cohort

    cache = prepare_cohort(args.data, args.cache, validation_fraction=args.validation_fraction,
                           seed=args.seed, workers=args.workers, limit=args.limit,
                           show_progress=not args.quiet)
    summary = json.loads((cache / "cohort.json").read_text())
    print(f"cohort in {cache}: {summary['processed']} processed, {len(summary['failed'])} "
          f"failed; {len(summary['split']['train'])} train, "
          f"{len(summary['split']['validation'])} validation")
    return 0 if not summary["failed"] else 3


def _synth(args: argparse.Namespace) -> int:
    from .guards import check_scan
    from .outputs import check_writable
    from .synthesis.files import synthesize_file
    from .synthesis.lesions import SynthesisConfig

    check_writable(args.out)
    check_scan(args.input)
    _threads(args.threads)
    config = SynthesisConfig(contrast=args.contrast, lesions=(args.lesions, args.lesions))
    report = synthesize_file(args.input, args.out, args.seed, config, args.library,
                             args.brain_mask)
    print(f"wrote {args.out}: image.nii.gz, lesion_mask.nii.gz, lesion_probability.nii.gz, "
          f"brain_mask.nii.gz, synth.json; lesion volume {report['lesion_volume_ml']:.1f} mL "
          f"in {report['synthesis_s']:.2f} s")
    return 0


def _train_zscore(args: argparse.Namespace, device: str | None) -> None:
    from .methods.zscore import ZScoreConfig
    from .preprocessing.harmonisation import HarmonisationConfig
    from .training.zscore import train_zscore

    copies = 2 if args.acquisition_copies is None else args.acquisition_copies
    config = ZScoreConfig(age_adjusted=not args.no_age, acquisition_copies=copies)
    folder = train_zscore(args.cohort, args.out, config,
                          harmonisation=HarmonisationConfig(
                              profile_sigma_mm=args.profile_sigma_mm))
    manifest = json.loads((folder / "manifest.json").read_text())
    print(f"wrote {folder}: threshold {manifest['calibration']['threshold']:.3f}, "
          "validation healthy FPR "
          f"{manifest['metrics']['validation_healthy_fpr_at_threshold']:.4f}")


def _with_steps_and_copies(training, args: argparse.Namespace):
    """A trainer's settings with --steps and --acquisition-copies where given."""
    from dataclasses import replace

    if args.steps:
        training = replace(training, steps=args.steps)
    if args.acquisition_copies is not None:
        training = replace(training, acquisition_copies=args.acquisition_copies)
    return training


def _train_autoencoder(args: argparse.Namespace, device: str | None) -> None:
    from .training.autoencoder import AutoencoderTraining, train_autoencoder

    training = _with_steps_and_copies(AutoencoderTraining(), args)
    if args.init_from:
        training = dataclasses.replace(training, init_from=args.init_from)
    if args.decay_from is not None:
        try:
            training = dataclasses.replace(training, decay_from=args.decay_from)
        except ValueError as error:
            raise UsageError(f"--decay-from {args.decay_from}: {error}; give a step below "
                             "--steps.") from None
    train_autoencoder(args.cohort, args.out, args.config, training, device)


def _train_transformer(args: argparse.Namespace, device: str | None) -> None:
    from .training.latent_diffusion import LatentDiffusionTraining, train_latent_diffusion

    if not args.autoencoder:
        raise UsageError("neuroad train transformer needs --autoencoder FOLDER.")
    training = _with_steps_and_copies(LatentDiffusionTraining(), args)
    train_latent_diffusion(args.cohort, args.autoencoder, args.out, args.config, training,
                           device)


def _train_cadd(args: argparse.Namespace, device: str | None) -> None:
    from .training.cadd_bundle import build_cadd_bundle

    if not (args.autoencoder and args.transformer):
        raise UsageError("neuroad train cadd needs --autoencoder and --transformer.")
    variants = args.variants.split(",") if args.variants else None
    build_cadd_bundle(args.cohort, args.autoencoder, args.transformer, args.out,
                      variants=variants, device=device)


def _train_mad_ad(args: argparse.Namespace, device: str | None) -> None:
    from dataclasses import replace

    from .training.mad_ad import MADADTraining, train_mad_ad

    training = MADADTraining(config=args.config)
    if args.steps:
        training = replace(training, diffusion=replace(training.diffusion, steps=args.steps))
    if args.autoencoder_steps:
        training = replace(training, autoencoder=replace(training.autoencoder,
                                                         steps=args.autoencoder_steps))
    if args.acquisition_copies is not None:
        training = replace(training, acquisition_copies=args.acquisition_copies)
    if args.mask_ratio_max is not None:
        training = replace(training, diffusion=replace(training.diffusion,
                                                       mask_ratio_max=args.mask_ratio_max))
    for fill in ("foreign_fill", "pathology_fill"):
        if getattr(args, fill) is not None:
            try:
                training = replace(training, diffusion=replace(
                    training.diffusion, **{fill: getattr(args, fill)}))
            except ValueError:
                raise UsageError("neuroad train mad_ad takes --foreign-fill or "
                                 "--pathology-fill, not both.") from None
    if args.pathology_clean:
        if not training.diffusion.pathology_fill:
            raise UsageError("--pathology-clean needs --pathology-fill P above 0.")
        training = replace(training, diffusion=replace(training.diffusion,
                                                       pathology_noised=False))
    if args.unet_channels:
        try:
            training = replace(training, denoiser_channels=args.unet_channels)
        except ValueError as error:
            raise UsageError(f"--unet-channels: {error}.") from None
    if args.autoencoder:
        if args.autoencoder_steps:
            raise UsageError("neuroad train mad_ad takes --autoencoder (reuse a trained one) "
                             "or --autoencoder-steps (train one), not both.")
        training = replace(training, autoencoder_from=args.autoencoder)
    train_mad_ad(args.cohort, args.out, training, device)


def _slice_training(args: argparse.Namespace, training_class):
    """A 2D trainer's settings: its named network size, with --steps,
    --acquisition-copies and --ema-decay where given."""
    from dataclasses import replace

    training = _with_steps_and_copies(training_class(config=args.config), args)
    if args.ema_decay is not None:
        training = replace(training, ema_decay=args.ema_decay)
    return training


def _train_cddpm(args: argparse.Namespace, device: str | None) -> None:
    from dataclasses import replace

    from .training.cddpm import CDDPMTraining, train_cddpm

    training = _slice_training(args, CDDPMTraining)
    if args.pretrain_steps:
        training = replace(training, pretraining=replace(training.pretraining,
                                                         steps=args.pretrain_steps))
    if args.noise_bank:
        training = replace(training, noise_bank=args.noise_bank)
    train_cddpm(args.cohort, args.out, training, device)


def _train_ddpm(args: argparse.Namespace, device: str | None) -> None:
    from .training.image_ddpm import ImageDDPMTraining, train_image_ddpm

    train_image_ddpm(args.cohort, args.out, _slice_training(args, ImageDDPMTraining), device)


def _train_sdm(args: argparse.Namespace, device: str | None) -> None:
    from .training.sdm import SDMTraining, train_sdm

    train_sdm(args.cohort, args.out, _slice_training(args, SDMTraining), device)


def _train_tdm(args: argparse.Namespace, device: str | None) -> None:
    from .training.tdm import TDMTraining, train_tdm

    train_tdm(args.cohort, args.out, _slice_training(args, TDMTraining), device)


def _train_cond_ldm(args: argparse.Namespace, device: str | None) -> None:
    from .training.cond_ldm import CondLDMTraining, train_cond_ldm

    if not args.autoencoder:
        raise UsageError("neuroad train cond_ldm needs --autoencoder FOLDER (the first stage, "
                         "e.g. the cadd-ixi-2mm bundle's autoencoder/).")
    train_cond_ldm(args.cohort, args.autoencoder, args.out,
                   _slice_training(args, CondLDMTraining), device)


def _train_ranges(args: argparse.Namespace, device: str | None) -> None:
    from .training.harmonisation import complete_healthy_ranges

    added, medians = complete_healthy_ranges(args.out, args.cohort)
    print(f"{args.out}: added the healthy ranges of "
          f"{', '.join(f'{k} {v[0]:.4f}-{v[1]:.4f}' for k, v in added.items()) or 'nothing'}"
          f"; the healthy medians of "
          f"{', '.join(f'{k} {v:.4f}' for k, v in medians.items()) or 'nothing'}")


# What `neuroad train NAME` runs: (trainer, whether it trains with torch, help).
NETWORK_SIZES = ("default", "paper", "tiny")  # every trainer's named configurations
TRAINERS = {
    "zscore": (_train_zscore, False, "the voxel-wise normative model"),
    "autoencoder": (_train_autoencoder, True, "CADD's first stage"),
    "transformer": (_train_transformer, True, "CADD's latent DDPM (needs --autoencoder)"),
    "cadd": (_train_cadd, True, "calibrates the CADD bundle of both stages (needs "
                                "--autoencoder and --transformer)"),
    "mad_ad": (_train_mad_ad, True, "MAD-AD: slice autoencoder, masked-diffusion UNet and "
                                    "calibration, in one resumable run"),
    "cddpm": (_train_cddpm, True, "cDDPM: encoder and conditioned UNet end to end, and "
                                  "calibration, in one resumable run"),
    "ddpm": (_train_ddpm, True, "the unconditional slice DDPM THOR and AutoDDPM share, and "
                                "both methods' calibrations, in one resumable run"),
    "sdm": (_train_sdm, True, "SDM (the longitudinal method's semantic DDIM) and FAM's "
                              "feature extractor, and calibration, in one resumable run"),
    "tdm": (_train_tdm, True, "TDM (imputes a follow-up scan) on pseudo-longitudinal pairs "
                              "from the cohort's age trend, and its imputation errors, in one "
                              "resumable run"),
    "cond_ldm": (_train_cond_ldm, True, "the pathology-conditioned LDM on a first stage "
                                        "(needs --autoencoder): pseudo-pathological pairs, "
                                        "the AdaGN latent UNet and calibration, in one "
                                        "resumable run"),
    "ranges": (_train_ranges, False, "adds to the bundle at --out the healthy ranges its "
                                     "intensity standard lacks (statistics added since)"),
}


def _train(args: argparse.Namespace) -> int:
    from .outputs import check_writable
    from .training.provenance import code_version

    if args.config not in NETWORK_SIZES and args.method != "autoencoder":
        raise UsageError(f"--config {args.config} names an autoencoder architecture; "
                         f"neuroad train {args.method} takes {', '.join(NETWORK_SIZES)}.")
    check_writable(args.out)
    # the manifest records the code that started the run, not the checkout at its end
    os.environ["NEUROAD_CODE_VERSION"] = code_version()
    trainer, uses_torch, _ = TRAINERS[args.method]
    device = None
    if uses_torch:
        import torch

        from .device import select_device

        torch.set_num_threads(args.threads or os.cpu_count() or 1)
        device = select_device(args.device)
    trainer(args, device)
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from .options import check_options

    options = check_options(_parse_options(args.option))
    if set(options) - {args.method}:
        raise UsageError(f"neuroad calibrate {args.method} takes {args.method}'s options only, "
                         f"not {', '.join(sorted(set(options) - {args.method}))} options.")
    import torch

    from .device import select_device
    from .models import find_bundle
    from .training.recalibration import recalibrate

    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    model = Path(args.model) if args.model else find_bundle(args.method).folder
    recalibrate(args.method, model, args.cohort, args.out, options.get(args.method),
                args.split, select_device(args.device), smoothing_sigma=args.smoothing_sigma)
    return 0


def _pack(args: argparse.Namespace) -> int:
    from .gridpack import pack_cases, pack_cohort

    source = Path(args.source)
    if source.is_dir():
        out = pack_cohort(source, args.out, tuple(args.split or ("train", "validation")))
    elif source.suffix == ".csv":
        out = pack_cases(source, args.out, args.contrast)
    else:
        raise InputError(f"{source} is neither a prepared cohort folder nor a cases.csv.")
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return 0


def _make_benchmarks(args: argparse.Namespace) -> int:
    from .evaluation.cases import (
        build_clinical_set,
        build_real_set,
        build_synthetic_set,
        export_lesion_library,
    )
    from .evaluation.longitudinal import build_longitudinal_set

    out = Path(args.out)
    _threads(args.threads)
    real = build_real_set(args.lesions, out / "real")
    library = export_lesion_library(out / "real", out / "lesion_library")
    synthetic = build_synthetic_set(args.cohort, out / "synthetic", args.versions, library,
                                    args.seed)
    clinical = build_clinical_set(args.cohort, out / "clinical", args.acquisitions)
    longitudinal = build_longitudinal_set(args.cohort, out / "longitudinal",
                                          library_folder=library,
                                          subjects=args.longitudinal_subjects)
    print(f"wrote {real}, {synthetic}, {clinical} and {longitudinal} (lesion library: "
          f"{library})")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from .device import select_device
    from .evaluation.harness import evaluate
    from .methods import load_method
    from .models import find_bundle, verify_bundle
    from .options import check_options

    options = check_options(_parse_options(args.option))
    device = select_device(args.device)
    methods = {}
    for name in args.methods.split(","):
        if args.models:
            folder = Path(args.models) / name
            if not (folder / "manifest.json").is_file():
                raise ModelError(f"--models {args.models} holds no model for {name}: it needs "
                                 f"the method's bundle in {folder} (a folder with its "
                                 "manifest.json), one folder per method named after it.")
        else:
            bundle = find_bundle(name)
            verify_bundle(bundle)
            folder = bundle.folder
        methods[name] = load_method(name, folder, options.get(name)).to(device)
        if args.map:
            methods[name].calibration = methods[name].calibration.with_map(args.map)
    out = evaluate(methods, args.cases, args.out, show_progress=not args.quiet,
                   age_shift=args.age_shift)
    print((out / "summary.md").read_text())
    return 0


def _terminal_progress():
    """A progress bar fed by the pipeline's progress events, on an interactive terminal only."""
    from tqdm import tqdm

    from .progress import Progress

    if not sys.stderr.isatty():
        return Progress(), None
    bar = tqdm(total=1, unit="step", file=sys.stderr, leave=False)

    def show(event: dict) -> None:
        if event.get("event") == "progress":
            bar.total, bar.n = event["total"], event["step"]
            bar.set_description(event["stage"])
            bar.refresh()

    return Progress(emit=show), bar


def _run(args: argparse.Namespace) -> int:
    from .methods.registry import LONGITUDINAL_METHODS

    _threads(args.threads)
    longitudinal = [m for m in args.method if m in LONGITUDINAL_METHODS]
    if longitudinal and len(args.method) > 1:
        raise UsageError(f"{longitudinal[0]} reads a patient's visits and runs alone: give it "
                         "as the only --method.")
    if not longitudinal and (len(args.input) > 1 or len(args.age) > 1):
        raise UsageError(f"{len(args.input)} scans and {len(args.age)} ages: several visits of "
                         "one patient need a longitudinal method (--method longitudinal); "
                         "to run many patients, use neuroad batch.")
    if args.brain_mask and len(args.brain_mask) != len(args.input):
        raise UsageError(f"{len(args.input)} scans but {len(args.brain_mask)} brain masks: give "
                         "one brain mask per scan, or none.")
    progress, bar = _terminal_progress()
    try:
        if longitudinal:
            return _run_visits(args, progress)
        from .pipeline import run

        reports = run(args.input[0], args.age[0], args.sex, args.method, args.out,
                      (args.brain_mask or [None])[0], args.seed, progress=progress,
                      device=args.device, options=_parse_options(args.option))
    finally:
        if bar is not None:
            bar.close()
    for name, report in reports.items():
        print(f"{name}: {_report_line(report)}")
    print(f"wrote {args.out}: pseudo_healthy.nii.gz, anomaly_map.nii.gz, anomaly_mask.nii.gz, "
          "report.json, summary.png")
    return 0


def _report_line(report: dict) -> str:
    """A run's result in one line: index, regions, volume, and the benchmark caveat."""
    verdict = report["model"].get("benchmark")
    caveat = (f" ({verdict['summary']})" if verdict and not verdict["meets_the_zscore_bar"]
              else "")
    return (f"abnormality index {report['abnormality_index']:.2f} "
            f"(z = {report['abnormality_index_z']:+.2f} against healthy subjects), "
            f"{report['lesions']['count']} anomalous regions, "
            f"{report['lesions']['volume_ml']:.1f} mL{caveat}")


def _run_visits(args: argparse.Namespace, progress) -> int:
    from .longitudinal import run_visits

    method = args.method[0]
    reports = run_visits(args.input, args.age, args.sex, args.out, method, args.brain_mask,
                         args.seed, progress=progress, device=args.device,
                         options=_parse_options(args.option).get(method))
    for number, report in enumerate(reports, start=1):
        print(f"visit {number} (age {report['covariates']['age']:g}): {_report_line(report)}")
    print(f"wrote {args.out}: visit1/ ... visit{len(reports)}/ (each pseudo_healthy.nii.gz, "
          "anomaly_map.nii.gz, anomaly_mask.nii.gz, report.json, summary.png), summary.png, "
          "visits.json")
    return 0


def _impute(args: argparse.Namespace) -> int:
    from .imputation import impute_scan

    _threads(args.threads)
    options = _parse_options(args.option)
    if set(options) - {"tdm"}:
        raise UsageError(f"neuroad impute takes TDM's options only (tdm.steps, tdm.eta, "
                         f"tdm.seed), not {', '.join(sorted(set(options) - {'tdm'}))} options.")
    progress, bar = _terminal_progress()
    try:
        report = impute_scan(args.input, args.age, args.to_age, args.sex, args.out,
                             args.brain_mask, args.seed, progress=progress, device=args.device,
                             options=options.get("tdm"))
    finally:
        if bar is not None:
            bar.close()
    print(f"imputed age {report['imputed_age']:g} from age {report['covariates']['age']:g} "
          f"(mean absolute change in the brain {report['change_in_brain']['mean_absolute']:.4f} "
          f"of the normalised intensity; model {report['model']['id']})")
    print(f"wrote {args.out}: imputed.nii.gz, change.nii.gz, report.json")
    return 0


def _batch(args: argparse.Namespace) -> int:
    from .batch import run_batch

    if args.cluster is None:
        _threads(args.threads)
    summary = run_batch(args.cases, args.method, args.out,
                        show_progress=not (args.quiet or args.events), device=args.device,
                        options=_parse_options(args.option), cluster=args.cluster,
                        cluster_config=args.cluster_config, shard=args.shard,
                        on_event=_print_event if args.events else None, threads=args.threads)
    return _summary_status(summary)


def _batch_merge(args: argparse.Namespace) -> int:
    from .batch import merge_shards

    return _summary_status(merge_shards(args.cases, args.out))


def _summary_status(summary: Path) -> int:
    """Say what a summary holds; exit 3 when a case failed."""
    with summary.open() as handle:
        statuses = [row["status"] for row in csv.DictReader(handle)]
    failed = statuses.count("failed")
    print(f"wrote {summary}: {len(statuses) - failed} cases done, {failed} failed")
    return 0 if not failed else 3


def _print_event(event: dict) -> None:
    print(json.dumps(event), flush=True)


def _parse_options(items: list[str] | None) -> dict[str, dict]:
    """--option METHOD.NAME=VALUE (numbers as numbers) -> {method: {name: value}}; the values
    are checked against the registry (options.check_options) before any work."""
    options: dict[str, dict] = {}
    for item in items or []:
        key, _, value = item.partition("=")
        method, _, name = key.partition(".")
        if not (method and name and value):
            raise UsageError(f"--option {item!r}: write METHOD.NAME=VALUE, e.g. cadd.t_int=1000.")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        options.setdefault(method, {})[name] = parsed
    return options


def _models(args: argparse.Namespace) -> int:
    from .models import list_bundles, store_folder
    from .models.bundles import verify_all
    from .models.store import delete_bundle, fetch_bundle, import_bundle

    if args.action in ("import", "fetch", "delete", "info") and not args.target:
        raise UsageError(f"neuroad models {args.action} needs a target (see --help).")
    if args.action == "import":
        print(f"imported {import_bundle(args.target).folder}")
        return 0
    if args.action == "fetch":
        if not args.sha256:
            raise UsageError("neuroad models fetch needs --sha256 of the zip (from its publisher).")
        print(f"fetched {fetch_bundle(args.target, args.sha256).folder}")
        return 0
    if args.action == "delete":
        print(f"deleted {delete_bundle(args.target)}")
        return 0
    if args.action == "info":
        matches = [b for b in list_bundles() if args.target in (b.id, b.method)]
        if not matches:
            raise ModelError(f"No model {args.target!r}; see `neuroad models list`.")
        print(json.dumps({**matches[0].manifest, "folder": str(matches[0].folder)}, indent=2))
        return 0
    if args.action == "verify":
        results = verify_all()
        for folder, problem in results:
            print(f"{folder}  {'verified' if not problem else 'REFUSED: ' + problem}")
        if not results:
            print(f"no models (store: {store_folder()})")
        failed = sum(1 for _, problem in results if problem)
        if failed:
            raise ModelError(f"{failed} of {len(results)} model(s) failed verification (see "
                             "above): reinstall or re-fetch them, or delete them.")
        return 0
    bundles = list_bundles()
    for bundle in bundles:
        print(f"{bundle.id}  method={bundle.method}  {bundle.folder}")
    if not bundles:
        print(f"no models (store: {store_folder()})")
    return 0


def _demo(args: argparse.Namespace) -> int:
    if not DEMO_SCAN.is_file():
        raise InputError(f"The bundled demo scan is missing ({DEMO_SCAN}); reinstall NeuroAD.")
    print(f"demo: {DEMO_SCAN.name}, a raw clinical T1 with a glioma (5.5 mm slices, skull on). "
          f"Its age and sex are not distributed with it: the demo uses {DEMO_AGE:g} / {DEMO_SEX}.")
    args.input, args.age, args.sex = [str(DEMO_SCAN)], [DEMO_AGE], DEMO_SEX
    args.method, args.brain_mask, args.seed, args.device = ["zscore"], None, 0, "auto"
    args.option = None
    code = _run(args)
    print(f"look at {Path(args.out) / 'summary.png'}")
    return code


def method_choices() -> list[str]:
    from .methods import method_names

    return method_names()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="neuroad", description="NeuroAD: unsupervised anomaly detection in brain MRI."
    )
    parser.add_argument("--version", action="version", version=f"neuroad {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=help_text, description=help_text,
                                   epilog=EXAMPLES[name],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)

    p = command("preprocess", "Bring a scan onto the model grid (N4, MNI registration, brain "
                              "mask, resampling, normalisation) and write a QC picture.")
    p.add_argument("input", help="NIfTI, NRRD, MHA file or DICOM series folder")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--brain-mask", help="brain mask of the input (skips brain extraction)")
    p.add_argument("--skull-stripped", action="store_true",
                   help="the input is already skull-stripped (detected automatically otherwise)")
    p.add_argument("--seed", type=SEED, default=0, help="seed of the registration sampling")
    p.add_argument("--threads", type=COUNT, help="CPU threads (default: all)")
    p.set_defaults(run=_preprocess)

    p = command("prepare-cohort", "Preprocess a healthy cohort (participants.csv + scans) into "
                                  "a cache with a fixed-seed, age-stratified train/validation "
                                  "split. Resumable.")
    p.add_argument("data", help="folder with participants.csv (subject,age,sex,file) and scans")
    p.add_argument("--cache", required=True, help="cache folder (created; resumed if present)")
    p.add_argument("--validation-fraction", type=float, default=0.15)
    p.add_argument("--seed", type=SEED, default=0, help="seed of the subject split")
    p.add_argument("--workers", type=COUNT, default=1, help="parallel processes")
    p.add_argument("--limit", type=COUNT, help="only the first N subjects (for a quick look)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=_prepare_cohort)

    p = command("synth", "Add synthetic lesions (fluid-driven anomaly randomization) to a scan "
                         "on the model grid, or to a native scan (preprocessed first).")
    p.add_argument("input", help="a grid image or a native scan")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=SEED, required=True, help="seed: the same seed, the same lesions")
    p.add_argument("--contrast", choices=["t1", "t1c", "t2", "flair"], default="t1")
    p.add_argument("--lesions", type=COUNT, default=2, help="number of lesions")
    p.add_argument("--library", help="folder of lesion masks on the grid to draw shapes from")
    p.add_argument("--brain-mask", help="brain mask (default: non-zero voxels of a grid image)")
    p.add_argument("--threads", type=COUNT, help="CPU threads (default: all)")
    p.set_defaults(run=_synth)

    p = command("train", "Train a method on a prepared healthy cohort and calibrate it on the "
                         "cohort's validation split.")
    p.add_argument("method", choices=list(TRAINERS),
                   help="; ".join(f"{name}: {entry[2]}" for name, entry in TRAINERS.items()))
    p.add_argument("--cohort", required=True, help="cache written by neuroad prepare-cohort")
    p.add_argument("--out", required=True, help="model folder to write (resumed if present)")
    p.add_argument("--no-age", action="store_true", help="zscore: no linear age term")
    p.add_argument("--acquisition-copies", type=int, choices=range(0, 11), metavar="N",
                   help="zscore / autoencoder / transformer / mad_ad / cddpm / ddpm / sdm / "
                   "tdm / cond_ldm: acquisition-augmented copies of every training scan "
                   "(defaults 2 / 1 / 1 / 1 / 1 / 1 / 1 / 1 / 1; 0 for none)")
    p.add_argument("--profile-sigma-mm", type=float, default=10.0,
                   help="zscore: smoothness of the intensity profile that harmonisation "
                   "matches (default 10 mm)")
    p.add_argument("--config", default="default",
                   choices=list(dict.fromkeys([*NETWORK_SIZES, *AUTOENCODER_CONFIGS])),
                   help="autoencoder / transformer / mad_ad / cddpm / ddpm / sdm / tdm / "
                        "cond_ldm: named network size; autoencoder only: latent16 (the "
                        "default network with 16 latent channels) or half (one halving, 4 "
                        "latent channels)")
    p.add_argument("--steps", type=COUNT, help="autoencoder / transformer / mad_ad (its UNet) / "
                                             "cddpm / ddpm / sdm / tdm / cond_ldm: training "
                                             "steps")
    p.add_argument("--ema-decay", type=EMA_DECAY, metavar="D",
                   help="cddpm / ddpm / sdm / tdm: decay of the moving average of the weights "
                        "the bundle keeps (default 0: the last weights; 0.999 for long runs)")
    p.add_argument("--decay-from", type=int, metavar="STEP",
                   help="autoencoder: from STEP on, the learning rate falls along a half cosine "
                        "to zero at --steps (default: constant)")
    p.add_argument("--init-from", metavar="FOLDER",
                   help="autoencoder: start from the weights of this trained first stage of "
                        "the same --config (fine-tuning it; default: from scratch)")
    p.add_argument("--pretrain-steps", type=COUNT,
                   help="cddpm: steps of masked-modelling pre-training of its encoder (SparK, "
                        "mask ratio 0.65) before the diffusion training (default: none)")
    p.add_argument("--noise-bank", type=COUNT, metavar="N",
                   help="cddpm: draw N simplex noise fields once and train on them, flipped "
                        "at random, instead of fresh fields every step (a 1.3-1.4x faster "
                        "CPU step; default: fresh)")
    p.add_argument("--autoencoder-steps", type=COUNT,
                   help="mad_ad: training steps of its slice autoencoder")
    p.add_argument("--autoencoder", help="transformer / cadd / cond_ldm: trained autoencoder "
                   "folder; mad_ad: a trained slice autoencoder (a MAD-AD bundle's "
                   "autoencoder/ folder) used frozen instead of training one")
    p.add_argument("--mask-ratio-max", type=RATIO, metavar="R",
                   help="mad_ad: training masks cover a share ~ U[0, R] of the latent patches "
                        "(default 0.4, the paper's)")
    p.add_argument("--foreign-fill", type=RATIO, metavar="P",
                   help="mad_ad: a share P of training samples start their masked positions "
                        "from another slice's latent there instead of their own, so that the "
                        "mask head learns to find content that does not belong (default 0, "
                        "the paper's: noise alone)")
    p.add_argument("--pathology-fill", type=RATIO, metavar="P",
                   help="mad_ad: a share P of training samples are slices crossed by a "
                        "fluid-driven pseudo-pathology, whose footprint joins the mask and "
                        "starts from the lesioned slice's latent, so that the mask head learns "
                        "to flag lesion-like content (default 0, the paper's: noise alone)")
    p.add_argument("--pathology-clean", action="store_true",
                   help="mad_ad with --pathology-fill: the lesion footprint stays the clean "
                        "lesioned latent at every level instead of being noised by eq. 2, as "
                        "inference meets a lesion from its first step")
    p.add_argument("--unet-channels", type=WIDTHS, metavar="C1,C2,...",
                   help="mad_ad: the masked UNet's channel widths, one per level (default: "
                        "those of --config; 32,64,64 for default)")
    p.add_argument("--transformer", help="trained transformer folder")
    p.add_argument("--variants", help="cadd: comma-separated variants to calibrate (default: "
                                      "cadd,cadd_nocov,cadd_noinpaint,ldm,ldm_tavg)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="every torch trainer: where it trains")
    p.add_argument("--threads", type=COUNT, help="CPU threads (default: all)")
    p.set_defaults(run=_train)

    from .methods.base import REFERENCE_SMOOTHING_SIGMA

    p = command("calibrate", "Recalibrate a trained method without retraining it: its healthy "
                             "threshold and normative statistics measured again on a prepared "
                             "cohort's healthy scans (e.g. a site's own controls), at other "
                             "inference options if given; written as a new bundle.")
    p.add_argument("method", choices=method_choices())
    p.add_argument("--cohort", required=True, help="healthy cohort written by neuroad "
                                                   "prepare-cohort (or its grid pack)")
    p.add_argument("--out", required=True, help="the new bundle's folder (must not exist)")
    p.add_argument("--model", help="the bundle folder to recalibrate (default: the installed "
                                   "bundle of the method)")
    p.add_argument("--split", choices=["validation", "all"], default="validation",
                   help="the cohort's scans to calibrate on: its validation split (default; "
                        "the training cohort's own), or all of them (controls that trained "
                        "nothing)")
    p.add_argument("--option", action="append", metavar="METHOD.NAME=VALUE",
                   help="an inference option the bundle then runs and is calibrated at, e.g. "
                        "cond_ldm.samples=4")
    p.add_argument("--smoothing-sigma", type=float, metavar="VOXELS",
                   help="variance smoothing of the healthy statistics behind normative maps, "
                        "in voxels (default: the bundle's own, e.g. 4 for cond-ldm-ixi-2mm; "
                        f"{REFERENCE_SMOOTHING_SIGMA:g}, what every training uses, for a "
                        "bundle calibrated before smoothing)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=COUNT, help="CPU threads (default: all)")
    p.set_defaults(run=_calibrate)

    p = command("pack", "Pack a prepared cohort or a benchmark set (its grid volumes, 8-bit "
                        "images, and its table) into one .npz that training and evaluation "
                        "read without SimpleITK, e.g. on a GPU server.")
    p.add_argument("source", help="cohort folder (prepare-cohort) or benchmark cases.csv")
    p.add_argument("--out", required=True, help="the .npz to write")
    p.add_argument("--split", action="append", choices=["train", "validation"],
                   help="cohort: only this split (repeatable; default both)")
    p.add_argument("--contrast", help="cases: only this contrast (e.g. t1)")
    p.set_defaults(run=_pack)

    p = command("make-benchmarks", "Build the benchmark sets: the real lesion cases on the "
                                   "grid, a lesion library, synthetic lesions on the cohort's "
                                   "validation subjects, healthy under clinical acquisition "
                                   "(validation scans degraded by the acquisition "
                                   "augmentation, and the clinical demo scan), and the "
                                   "longitudinal set (healthy and growing-lesion sequences of "
                                   "three re-acquired visits per validation subject).")
    p.add_argument("--cohort", required=True)
    p.add_argument("--lesions", required=True, help="folder of the real lesion cases")
    p.add_argument("--out", required=True)
    p.add_argument("--versions", type=COUNT, default=3, help="lesioned copies per subject")
    p.add_argument("--acquisitions", type=COUNT, default=2,
                   help="clinical-acquisition copies per validation subject")
    p.add_argument("--longitudinal-subjects", type=COUNT,
                   help="validation subjects in the longitudinal set (default: all)")
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--threads", type=COUNT, help="CPU threads (default: all)")
    p.set_defaults(run=_make_benchmarks)

    p = command("evaluate", "Run methods on a benchmark manifest and summarise the metrics "
                            "(per-case CSV, mean with 95%% CI as JSON and markdown, pictures). "
                            "Resumable: saved anomaly maps are reused.")
    p.add_argument("--methods", required=True, help="comma-separated method names")
    p.add_argument("--models", help="folder holding one model folder per method (default: "
                                    "the installed bundles)")
    p.add_argument("--cases", required=True,
                   help="benchmark manifest (cases.csv) or its grid pack (.npz)")
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where torch methods run")
    p.add_argument("--option", action="append", metavar="METHOD.NAME=VALUE",
                   help="a method option, e.g. cadd.respacing=5")
    p.add_argument("--map", choices=["raw", "normative"],
                   help="evaluate this map of every method rather than the one its bundle "
                        "outputs by default (benchmarks/normative_maps.py reads raw maps)")
    p.add_argument("--age-shift", type=float, default=0.0, metavar="YEARS",
                   help="give every case a wrong age, YEARS older below 50 and YEARS younger "
                        "from 50 on (the normative check: a wrong age should raise the "
                        "abnormality index of an age-conditioned method)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=_evaluate)

    p = command("run", "Run anomaly detection on a scan: pseudo-healthy image, anomaly map, "
                       "anomaly mask and report, in the scan's own geometry.")
    p.add_argument("input", nargs="+", help="NIfTI, NRRD, MHA file or DICOM series folder; "
                   "a longitudinal method takes a patient's visits, in scan order")
    p.add_argument("--age", type=float, nargs="+", required=True,
                   help="age in years (0-120); one per visit for a longitudinal method")
    p.add_argument("--sex", required=True, choices=["F", "M"])
    p.add_argument("--method", action="append", required=True, choices=method_choices(),
                   help="method (repeat to compare several)")
    p.add_argument("--brain-mask", nargs="+", help="brain mask of the input (skips brain "
                   "extraction); one per visit for a longitudinal method")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where torch methods run (auto: CUDA when present)")
    p.add_argument("--option", action="append", metavar="METHOD.NAME=VALUE",
                   help="a method option, e.g. cadd.t_int=1000 (see the README)")
    p.add_argument("--threads", type=COUNT, help="CPU threads (default: all)")
    p.set_defaults(run=_run)

    p = command("impute", "Impute a plausible later visit of a scan with TDM (a diffusion "
                          "model of the change between visits): the scan with the change from "
                          "its age to --to-age added inside the brain, on its own geometry.")
    p.add_argument("input", help="NIfTI, NRRD, MHA file or DICOM series folder")
    p.add_argument("--age", type=float, required=True, help="age at the scan (years)")
    p.add_argument("--to-age", type=float, required=True, help="age to impute at (years, later)")
    p.add_argument("--sex", required=True, choices=["F", "M"])
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--brain-mask", help="brain mask of the input (skips brain extraction)")
    p.add_argument("--seed", type=SEED, default=0, help="seed of the registration sampling")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where TDM runs (auto: CUDA when present)")
    p.add_argument("--option", action="append", metavar="tdm.NAME=VALUE",
                   help="a sampling option: tdm.steps (DDIM steps, default 20), tdm.eta, "
                        "tdm.seed")
    p.add_argument("--threads", type=COUNT, help="CPU threads (default: all)")
    p.set_defaults(run=_impute)

    p = command("batch", "Run every case of a CSV table (path, age, sex[, brain_mask, case]); a "
                         "failing case is reported and the others go on. Resumable.")
    p.add_argument("cases", help="CSV case table")
    p.add_argument("--method", action="append", required=True, choices=method_choices())
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where torch methods run (auto: CUDA when present)")
    p.add_argument("--option", action="append", metavar="METHOD.NAME=VALUE",
                   help="a method option, e.g. cadd.respacing=5")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--events", action="store_true",
                   help="progress as JSON lines on stdout ({event: batch|case, ...}), no bar")
    p.add_argument("--threads", type=COUNT,
                   help="CPU threads per case (default: all; on a cluster, the cores over "
                        "the workers)")
    p.add_argument("--cluster", metavar="SPEC",
                   help="run on a Dask cluster (pip install \"neuroad[cluster]\"): local:N, "
                        "tcp://host:8786, scheduler.json, or slurm")
    p.add_argument("--cluster-config", metavar="FILE",
                   help="with --cluster slurm: YAML or TOML of cores, memory, walltime, queue, "
                        "gpus, jobs or adaptive (see the README)")
    p.add_argument("--shard", metavar="I/N",
                   help="only cases I, I+N, I+2N, ... (0 <= I < N; a SLURM array task each), "
                        "into summary.shard-I-of-N.csv; join with neuroad batch-merge")
    p.set_defaults(run=_batch)

    p = command("batch-merge", "Join the shard summaries of a batch run with --shard I/N into "
                               "one summary.csv, in the table's order.")
    p.add_argument("cases", help="the CSV case table the shards ran")
    p.add_argument("--out", required=True, help="the batch's output folder")
    p.set_defaults(run=_batch_merge)

    p = command("models", "List, verify, import, fetch, delete or describe model bundles.")
    p.add_argument("action", choices=["list", "verify", "import", "fetch", "delete", "info"])
    p.add_argument("target", nargs="?", help="import: folder or zip; fetch: URL; "
                                             "delete/info: model id")
    p.add_argument("--sha256", help="fetch: expected sha256 of the zip")
    p.set_defaults(run=_models)

    p = command("demo", "Run NeuroAD (zscore) on the bundled demo scan, a raw clinical T1 with a "
                        "glioma.")
    p.add_argument("--out", default="neuroad-demo", help="output folder")
    p.add_argument("--threads", type=COUNT, help="CPU threads (default: all)")
    p.set_defaults(run=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except NeuroADError as error:
        print(f"neuroad: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("neuroad: cancelled", file=sys.stderr)
        return EXIT_CANCELLED
    except MemoryError:
        print("neuroad: error: out of memory", file=sys.stderr)
        return EXIT_OUT_OF_MEMORY
    except Exception as error:  # noqa: BLE001 - last resort: report, never a bare traceback
        print(f"neuroad: internal error: {type(error).__name__}: {error}", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
