"""What a lent GPU machine runs, it runs without SimpleITK and nibabel (neither is installed
there): training on grid packs and evaluating on them. Checked in a subprocess in which both
imports fail."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO

SCRIPT = """
import NeuroADLib.cli as cli
import NeuroADLib.evaluation.harness
import NeuroADLib.training.mad_ad
import NeuroADLib.training.cddpm
import NeuroADLib.training.image_ddpm
import NeuroADLib.training.latent_diffusion
import NeuroADLib.training.autoencoder
import NeuroADLib.methods.mad_ad
import NeuroADLib.methods.cddpm
import NeuroADLib.methods.ddpm_baselines
import NeuroADLib.methods.cadd
cli.build_parser().parse_args(["train", "mad_ad", "--cohort", "pack.npz", "--out", "x"])
from NeuroADLib.options import check_options
check_options({"mad_ad": {"steps": 5}, "cddpm": {"levels": 1}, "thor": {"stride": 25}})
print("ok")
"""


def test_training_and_evaluation_import_without_simpleitk_or_nibabel(tmp_path):
    for name in ("SimpleITK", "nibabel"):
        (tmp_path / f"{name}.py").write_text(f"raise ImportError('no {name} here')\n")
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                            env={"PYTHONPATH": f"{tmp_path}:{REPO}", "PATH": "/usr/bin:/bin"},
                            timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
