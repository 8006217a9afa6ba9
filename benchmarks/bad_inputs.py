"""The bad-input table: each bad input through `neuroad run`, its exit code and message, and
whether anything was left in the output folder. Prints a markdown table.

    python benchmarks/bad_inputs.py GOOD_SCAN
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np


def cases(work: Path, good: Path) -> list[tuple[str, list[str], dict]]:
    def image(name: str, array: np.ndarray) -> str:
        path = work / name
        nib.save(nib.Nifti1Image(array, np.eye(4)), path)
        return str(path)

    (work / "garbage.nii.gz").write_bytes(b"not an image" * 50)
    nan = np.random.rand(40, 40, 40).astype(np.float32)
    nan[5, 5, 5] = np.nan
    cube = np.zeros((40, 40, 40), np.float32)
    cube[10:30, 10:30, 10:30] = np.random.rand(20, 20, 20) + 1
    store = work / "store"
    from NeuroADLib.models import find_bundle

    shutil.copytree(find_bundle("zscore").folder, store / "zscore")
    weights = store / "zscore" / "zscore.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one flipped byte
    weights.write_bytes(bytes(data))
    blocker = work / "a_file"
    blocker.write_text("x")
    ok = ["--age", "50", "--sex", "F", "--method", "zscore"]
    return [
        ("missing file", [str(work / "missing.nii.gz"), *ok], {}),
        ("unreadable file", [str(work / "garbage.nii.gz"), *ok], {}),
        ("2D image", [image("2d.nii.gz", np.random.rand(30, 30).astype(np.float32)), *ok], {}),
        ("4D image", [image("4d.nii.gz", np.random.rand(9, 9, 9, 3).astype(np.float32)), *ok],
         {}),
        ("constant volume", [image("const.nii.gz", np.ones((20, 20, 20), np.float32)), *ok], {}),
        ("NaN in volume", [image("nan.nii.gz", nan), *ok], {}),
        ("not a head (4 cm cube)", [image("cube.nii.gz", cube), *ok], {}),
        ("age missing", [str(good), "--sex", "F", "--method", "zscore"], {}),
        ("age -3", [str(good), "--age", "-3", "--sex", "F", "--method", "zscore"], {}),
        ("age 130", [str(good), "--age", "130", "--sex", "F", "--method", "zscore"], {}),
        ("sex X", [str(good), "--age", "50", "--sex", "X", "--method", "zscore"], {}),
        ("unknown method", [str(good), "--age", "50", "--sex", "F", "--method", "nope"], {}),
        ("bundle with a wrong hash", [str(good), *ok], {"NEUROAD_MODELS": str(store)}),
        ("output not writable", [str(good), *ok, "--out", str(blocker / "out")], {}),
    ]


def main() -> None:
    import os

    good = Path(sys.argv[1])
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        print("| input | exit code | message | outputs left |")
        print("|---|---|---|---|")
        for name, args, env in cases(work, good):
            out = work / "out"
            command = [sys.executable, "-m", "NeuroADLib", "run", *args]
            if "--out" not in args:
                command += ["--out", str(out)]
            result = subprocess.run(command, capture_output=True, text=True,
                                    env={**os.environ, **env})
            message = (result.stderr.strip().splitlines() or [""])[-1].replace("|", "/")
            left = "yes" if out.exists() else "no"
            print(f"| {name} | {result.returncode} | {message[:160]} | {left} |")
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
