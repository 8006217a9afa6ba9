"""The bad-input benchmark: what a user meets on a bad day, through `neuroad run`, `neuroad
batch`, the worker and the Slicer module's logic (NeuroADSlicerLib on slicer-core, as its tests
run it). Each case is checked for its exit code, its message, no partial output (no output
folder, no staging folder), the input untouched (sha256 before and after), and measured: wall
time and peak memory of the process and everything it started (its rusage). Prints a markdown
table and the worst case; exits 1 when a case fails a check or the worst case exceeds 30 s or
2 GB.

    python benchmarks/bad_inputs.py [GOOD_SCAN]      # default: the bundled demo scan
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "NeuroADLib" / "data" / "demo" / "tcga_fg_6692_t1.nii.gz"
WORST_SECONDS, WORST_MB = 30.0, 2048.0
NEUROAD = [sys.executable, "-m", "NeuroADLib"]
WORKER = [sys.executable, "-m", "NeuroADLib.worker"]
SLICER = [sys.executable, str(Path(__file__).resolve()), "--slicer"]


@dataclass
class Case:
    via: str
    name: str
    command: list[str]
    code: int
    words: str
    out: Path
    inputs: list[Path] = field(default_factory=list)
    env: dict = field(default_factory=dict)
    outputs: set = field(default_factory=set)  # what the output folder may hold; empty: absent


@dataclass
class Outcome:
    code: int
    message: str
    seconds: float
    peak_mb: float
    clean: bool
    untouched: bool

    def passed(self, case: Case) -> bool:
        return (self.code == case.code and case.words in self.message and self.clean
                and self.untouched and "internal error" not in self.message)


def volume(path: Path, shape=(60, 70, 50), voxel_mm=(3.0, 3.0, 3.0), array=None) -> Path:
    """A NIfTI file of random intensities (or `array`) with these voxel sizes."""
    if array is None:
        array = np.random.default_rng(0).random(shape).astype(np.float32)
    nib.save(nib.Nifti1Image(array, np.diag([*voxel_mm, 1.0])), path)
    return path


def write_dicom_series(image, folder: Path, uid: str) -> Path:
    """An int16 volume as a DICOM series, one file per slice, with its geometry tags."""
    import SimpleITK as sitk

    folder.mkdir(parents=True, exist_ok=True)
    image = sitk.Cast(image, sitk.sitkInt16)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(image.GetDepth()):
        slice_k = image[:, :, k]
        position = image.TransformIndexToPhysicalPoint((0, 0, k))
        tags = {"0008|0060": "MR", "0020|000d": uid + ".1", "0020|000e": uid + ".2",
                "0020|0037": "1\\0\\0\\0\\1\\0", "0020|0013": str(k + 1),
                "0020|0032": "\\".join(str(v) for v in position),
                "0018|0050": str(image.GetSpacing()[2]), "0008|0018": f"{uid}.3.{k + 1}",
                "0028|0030": f"{image.GetSpacing()[1]}\\{image.GetSpacing()[0]}"}
        for key, value in tags.items():
            slice_k.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"{uid[-1]}_{k:03d}.dcm"))
        writer.Execute(slice_k)
    return folder


def dicom_image():
    import SimpleITK as sitk

    image = sitk.GetImageFromArray((np.random.default_rng(1).random((40, 80, 70)) * 1000)
                                   .astype(np.int16))
    image.SetSpacing((2.0, 2.0, 2.5))
    return image


def tampered_store(root: Path, how: str) -> Path:
    """A model store holding the bundled zscore model damaged one way."""
    from NeuroADLib.models import find_bundle

    store = root / f"store_{how}"
    shutil.copytree(find_bundle("zscore").folder, store / "zscore")
    weights = store / "zscore" / "zscore.safetensors"
    manifest_path = store / "zscore" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    if how == "flipped":
        data = bytearray(weights.read_bytes())
        data[-1] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif how == "hash":
        manifest["files"]["zscore.safetensors"]["sha256"] = "ab" * 32
    else:
        del manifest["files"]["zscore.safetensors"]
    manifest_path.write_text(json.dumps(manifest))
    return store


def run_cases(w: Path, good: Path) -> list[Case]:
    """`neuroad run`: damaged files, impossible geometries, DICOM, masks, covariates, options,
    models, output, memory."""
    ok = ["--age", "50", "--sex", "F", "--method", "zscore"]
    out = w / "out"
    head = volume(w / "head.nii.gz")  # head-sized noise: passes every header guard

    (w / "garbage.nii.gz").write_bytes(b"not an image" * 50)
    truncated = w / "truncated.nii.gz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    raw = w / "truncated.nii"
    raw.write_bytes(gzip.decompress(good.read_bytes())[:1_000_000])
    crc = bytearray(gzip.compress(gzip.decompress(head.read_bytes()), compresslevel=1))
    crc[len(crc) // 2] ^= 0xFF
    (w / "crc.nii.gz").write_bytes(bytes(crc))
    import SimpleITK as sitk

    sitk.WriteImage(sitk.ReadImage(str(head)), str(w / "truncated.nrrd"), useCompression=True)
    nrrd = (w / "truncated.nrrd").read_bytes()
    (w / "truncated.nrrd").write_bytes(nrrd[: len(nrrd) // 2])
    (w / "scan.png").write_bytes(b"\x89PNG")
    nan = np.random.default_rng(0).random((60, 70, 50)).astype(np.float32)
    nan[5, 5, 5] = np.nan
    cube = np.zeros((50, 50, 50), np.float32)
    cube[15:35, 15:35, 15:35] = np.random.default_rng(0).random((20, 20, 20)) + 1
    gap = write_dicom_series(dicom_image(), w / "dicom_gap", "1.2.826.0.1.3680043.2.1125.7.1")
    (gap / "1_020.dcm").unlink()
    mixed = write_dicom_series(dicom_image(), w / "dicom_mixed", "1.2.826.0.1.3680043.2.1125.7.2")
    write_dicom_series(dicom_image()[:, :, :30], mixed, "1.2.826.0.1.3680043.2.1125.7.3")
    lesion = np.zeros((60, 70, 50), np.uint8)
    lesion[20:25, 20:25, 20:25] = 1
    blocker = w / "a_file"
    blocker.write_text("x")

    def run(name, scan, code, words, *extra, env=None, inputs=(), target=out):
        return Case("run", name, [*NEUROAD, "run", str(scan), *extra, "--out", str(target)],
                    code, words, target, [Path(scan), *inputs], env or {})

    mask_other = volume(w / "mask_other.nii.gz", (90, 105, 75), (2.0, 2.0, 2.0))
    mask_empty = volume(w / "mask_empty.nii.gz", array=np.zeros((60, 70, 50), np.uint8))
    mask_lesion = volume(w / "mask_lesion.nii.gz", array=lesion)
    return [
        run("missing file", w / "missing.nii.gz", 3, "not found", *ok),
        run("not an image (.nii.gz of text)", w / "garbage.nii.gz", 3, "damaged", *ok),
        run("truncated .nii.gz (half the demo)", truncated, 3, "truncated or damaged", *ok),
        run("truncated .nii", raw, 3, "truncated or damaged", *ok),
        run("corrupt byte in .nii.gz (CRC)", w / "crc.nii.gz", 3, "truncated or damaged", *ok),
        run("truncated .nrrd", w / "truncated.nrrd", 3, "truncated or damaged", *ok),
        run("unsupported file type (.png)", w / "scan.png", 3, "Unsupported file type", *ok),
        run("2D image", volume(w / "2d.nii.gz", array=np.random.rand(64, 64).astype(
            np.float32)), 3, "2D image", *ok),
        run("4D image", volume(w / "4d.nii.gz", array=np.random.rand(40, 40, 40, 3).astype(
            np.float32)), 3, "4D image", *ok),
        run("constant volume", volume(w / "const.nii.gz", array=np.ones((60, 70, 50),
                                                                        np.float32)),
            3, "empty or constant", *ok),
        run("NaN in volume", volume(w / "nan.nii.gz", array=nan), 3, "NaN", *ok),
        run("4 x 4 x 4 volume", volume(w / "tiny.nii.gz", (4, 4, 4), (1.0, 1.0, 1.0)), 3,
            "too small to hold a brain", *ok),
        run("20 mm voxels, 96 x 96 x 60 (header in cm)", volume(
            w / "cm.nii.gz", (96, 96, 60), (20.0, 20.0, 20.0)), 3, "header in cm", *ok),
        run("0.1 mm voxels, 256 x 256 x 150 (25 mm field)", volume(
            w / "small_fov.nii.gz", (256, 256, 150), (0.1, 0.1, 0.1)), 3, "field of view",
            *ok),
        run("field of view 600 mm", volume(w / "big_fov.nii.gz", (200, 90, 90),
                                           (3.0, 3.0, 3.0)), 3, "600 mm along x", *ok),
        run("voxels 0.3 x 0.3 x 8 mm (27:1)", volume(w / "aniso.nii.gz", (400, 400, 20),
                                                     (0.3, 0.3, 8.0)), 3, "times longer", *ok),
        run("not a head (4 cm cube, 10 cm field)", volume(w / "cube.nii.gz", array=cube,
                                                          voxel_mm=(2.0, 2.0, 2.0)),
            3, "plausible", *ok),
        run("DICOM series with a missing slice", gap, 3, "missing slices", *ok),
        run("two DICOM series in one folder", mixed, 3, "mixes 2 DICOM series", *ok),
        run("brain mask of another geometry", head, 3, "another geometry than the scan", *ok,
            "--brain-mask", str(mask_other), inputs=[mask_other]),
        run("empty brain mask", head, 3, "is empty", *ok, "--brain-mask", str(mask_empty),
            inputs=[mask_empty]),
        run("lesion mask given as brain mask", head, 3, "lesion mask", *ok, "--brain-mask",
            str(mask_lesion), inputs=[mask_lesion]),
        run("age missing", good, 2, "--age", "--sex", "F", "--method", "zscore"),
        run("age -3", good, 3, "outside 0-120", "--age", "-3", "--sex", "F", "--method",
            "zscore"),
        run("age 130", good, 3, "outside 0-120", "--age", "130", "--sex", "F", "--method",
            "zscore"),
        run("sex X", good, 2, "invalid choice", "--age", "50", "--sex", "X", "--method",
            "zscore"),
        run("unknown method", good, 2, "invalid choice", "--age", "50", "--sex", "F",
            "--method", "nope"),
        run("option cadd.t_int=abc", good, 2, "integer from 1 to 1000", *ok, "--option",
            "cadd.t_int=abc"),
        run("option cadd.percentile=120", good, 2, "between 0 and 100", *ok, "--option",
            "cadd.percentile=120"),
        run("option cadd.respacing=7", good, 2, "does not divide", *ok, "--option",
            "cadd.respacing=7"),
        run("option zscore.t_int (no such option)", good, 2, "no option t_int", *ok,
            "--option", "zscore.t_int=5"),
        run("bundle: one flipped byte", good, 4, "is corrupt", *ok,
            env={"NEUROAD_MODELS": str(tampered_store(w, "flipped"))}),
        run("bundle: manifest hash edited", good, 4, "is corrupt", *ok,
            env={"NEUROAD_MODELS": str(tampered_store(w, "hash"))}),
        run("bundle: weights dropped from the manifest", good, 4, "not listed", *ok,
            env={"NEUROAD_MODELS": str(tampered_store(w, "dropped"))}),
        run("output not writable", good, 7, "not a folder", *ok, target=blocker / "out"),
        run("memory estimate above the limit", good, 5, "needs about", *ok,
            env={"NEUROAD_MEMORY_LIMIT_MB": "300"}),
    ]


def batch_cases(w: Path, good: Path) -> list[Case]:
    """`neuroad batch`: unusable tables are refused before any case; a bad row fails alone."""
    cm = volume(w / "batch_cm.nii.gz", (96, 96, 60), (20.0, 20.0, 20.0))
    tables = {
        "empty": "",
        "header": "path,age,sex\n",
        "columns": "file,age,sex\na.nii.gz,50,F\n",
        "duplicate": f"path,age,sex,case\n{good},50,F,p1\n{good},60,M,p1\n",
        "rows": f"path,age,sex\n{cm}\n{good},50\nmissing.nii.gz,40,M\n{good},fifty,F\n",
        "option": f"path,age,sex\n{good},50,F\n",
    }
    paths = {}
    for name, text in tables.items():
        paths[name] = w / f"cases_{name}.csv"
        paths[name].write_text(text)
    out = w / "batch_out"

    def batch(name, table, code, words, *extra, outputs=()):
        return Case("batch", name, [*NEUROAD, "batch", str(table), "--method", "zscore",
                                    "--quiet", "--out", str(out), *extra],
                    code, words, out, [Path(table)], {}, set(outputs))

    return [
        batch("case table missing", w / "none.csv", 3, "not found"),
        batch("case table empty (0 bytes)", paths["empty"], 3, "is empty"),
        batch("case table with a header only", paths["header"], 3, "has no cases"),
        batch("case table without a path column", paths["columns"], 3, "lacks the column"),
        batch("duplicate case names", paths["duplicate"], 3, "case names must be unique"),
        batch("rows missing age / sex, bad file, age 'fifty'", paths["rows"], 3,
              "0 cases done, 4 failed", outputs={"summary.csv"}),
        batch("option cadd.t_int=abc", paths["option"], 2, "integer from 1 to 1000",
              "--option", "cadd.t_int=abc"),
    ]


def worker_cases(w: Path, good: Path) -> list[Case]:
    """The worker: malformed requests and bad inputs, each an error event with its code."""
    out = w / "worker_out"
    base = {"input": str(good), "age": 50, "sex": "F", "methods": ["zscore"], "out": str(out),
            "id": "bench"}
    cm = volume(w / "worker_cm.nii.gz", (96, 96, 60), (20.0, 20.0, 20.0))
    truncated = w / "worker_truncated.nii.gz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    requests = [
        ("request not JSON", "{not json", 2, "not a JSON object"),
        ("request without 'out'", {k: v for k, v in base.items() if k != "out"}, 2, "lacks 'out'"),
        ("age 'abc'", {**base, "age": "abc"}, 2, "'age' must be a number"),
        ("methods not a list", {**base, "methods": "zscore"}, 2, "non-empty list"),
        ("option t_int 'abc'", {**base, "options": {"cadd": {"t_int": "abc"}}}, 2,
         "integer from 1 to 1000"),
        ("20 mm voxels (header in cm)", {**base, "input": str(cm)}, 3, "header in cm"),
        ("truncated .nii.gz", {**base, "input": str(truncated)}, 3, "truncated or damaged"),
        ("missing brain mask", {**base, "brain_mask": str(w / "none.nii.gz")}, 3, "not found"),
    ]
    cases = []
    for k, (name, request, code, words) in enumerate(requests):
        path = w / f"request{k}.json"
        path.write_text(request if isinstance(request, str) else json.dumps(request))
        inputs = [path] + ([Path(request["input"])] if isinstance(request, dict) else [])
        cases.append(Case("worker", name, [*WORKER, str(path)], code, words, out, inputs))
    return cases


def slicer_cases(w: Path, good: Path) -> list[Case]:
    """The Slicer module's logic (NeuroADSlicerLib with slicer-core): what the module refuses
    before starting a worker, and what the worker refuses, as the module reports it."""
    out = w / "slicer_tmp"
    out.mkdir()
    table = w / "slicer_cases.csv"
    table.write_text(f"path,age,sex\n{w / 'none.nii.gz'},50,F\n{good},,F\n")
    names = [
        ("age missing (module)", 2, "enter the age"),
        ("option text cadd.t_int=abc (module)", 2, "integer from 1 to 1000"),
        ("volume node with 20 mm voxels", 3, "header in cm"),
        ("volume node of 4 x 4 x 4", 3, "too small to hold a brain"),
        ("brain mask node of another geometry", 3, "another geometry than the scan"),
        ("options {'cadd': {'seed': -1}}", 2, "integer from 0 to"),
        ("memory limit of the worker's environment", 5, "needs about"),
        ("batch: missing file and missing age", 3, "Age is required"),
    ]
    return [Case("slicer", name, [*SLICER, str(k), str(w), str(good)], code, words, out,
                 [table] if "batch" in name else [], {}, set())
            for k, (name, code, words) in enumerate(names)]


def slicer_case(index: int, w: Path, good: Path) -> int:
    """One Slicer case in this process: prints its message, returns its exit code."""
    sys.path.insert(0, str(REPO / "NeuroAD"))
    import slicer
    from NeuroADSlicerLib import engine, mrml, runs, worker

    scene = slicer.vtkMRMLScene()
    settings = worker.WorkerSettings([sys.executable], cancelGraceSeconds=5)
    temp = w / "slicer_tmp"

    def node(shape, spacing, name="scan", array=None):
        array = np.random.default_rng(0).random(shape).astype(np.float32) if array is None \
            else array
        volume_node = mrml.volumeNodeFromArray(scene, array, name)
        volume_node.SetSpacing(spacing)
        return volume_node

    def scene_run(volume_node, mask=None, options=None, environment=None):
        settings.environment = environment or {}
        run = runs.SceneRun(volume_node, 50.0, "F", ["zscore"], mask, "cpu", options, settings,
                            tempRoot=temp)
        runs.runToCompletion(run)
        return 0

    head = (50, 70, 60)
    try:
        if index == 0:
            problems = engine.requestProblems(True, None, "F", ["zscore"])
            raise ValueError("; ".join(problems))
        if index == 1:
            problems = engine.requestProblems(True, 50, "F", ["zscore"], "cadd.t_int=abc")
            raise ValueError("; ".join(problems))
        if index == 2:
            return scene_run(node((60, 96, 96), (20.0, 20.0, 20.0)))
        if index == 3:
            return scene_run(node((4, 4, 4), (1.0, 1.0, 1.0)))
        if index == 4:
            mask = node((75, 105, 90), (2.0, 2.0, 2.0), "mask",
                        np.ones((75, 105, 90), np.uint8))
            return scene_run(node(head, (3.0, 3.0, 3.0)), mask)
        if index == 5:
            return scene_run(node(head, (3.0, 3.0, 3.0)), options={"cadd": {"seed": -1}})
        if index == 6:
            return scene_run(node(head, (3.0, 3.0, 3.0)),
                             environment={"NEUROAD_MEMORY_LIMIT_MB": "300"})
        batch = runs.BatchRun(w / "slicer_cases.csv", ["zscore"], temp / "batch", "cpu",
                              settings=settings)
        runs.runToCompletion(batch)
        rows = batch.summary
        left = sorted(p.name for p in (temp / "batch").iterdir())
        print(f"left {left}; " + "; ".join(f"{r['case']}: {r['exit_code']} {r['message']}"
                                            for r in rows))
        shutil.rmtree(temp / "batch")
        return max(int(r["exit_code"]) for r in rows) if left == ["summary.csv"] else 1
    except runs.RunError as error:
        print(f"{error.kind}: {error}")
        return error.code
    except ValueError as error:  # the module refuses before starting a worker
        print(f"ValueError: {error}")
        return 2


def digest(paths: list[Path]) -> str:
    """sha256 over files and the files inside folders."""
    total = hashlib.sha256()
    for path in paths:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for item in files:
            if item.exists():
                total.update(str(item).encode() + item.read_bytes())
    return total.hexdigest()


def execute(case: Case) -> Outcome:
    before = digest(case.inputs)
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        process = subprocess.Popen(case.command, stdout=stdout, stderr=stderr, text=True,
                                   env={**os.environ, **case.env})
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - start
        stdout.seek(0)
        stderr.seek(0)
        text = stdout.read() + stderr.read()
    message = _message(case, text)
    held = sorted(p.name for p in case.out.iterdir()) if case.out.is_dir() else []
    staging = case.out.parent.is_dir() and any(
        ".partial-" in p.name for p in case.out.parent.iterdir())
    clean = (set(held) == case.outputs if case.outputs else not held) and not staging
    outcome = Outcome(process.returncode, message, seconds, usage.ru_maxrss / 1024, clean,
                      digest(case.inputs) == before)
    if case.outputs:
        shutil.rmtree(case.out, ignore_errors=True)
    return outcome


def _message(case: Case, text: str) -> str:
    """The line that says what went wrong: the worker's error event, else the last line."""
    if case.via == "worker":
        for line in reversed(text.splitlines()):
            if line.startswith("{") and '"error"' in line:
                event = json.loads(line)
                return f"{event['type']}: {event['message']}"
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--slicer":
        return slicer_case(int(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))
    good = Path(sys.argv[1]) if len(sys.argv) > 1 else DEMO
    with tempfile.TemporaryDirectory() as folder:
        w = Path(folder)
        cases = (run_cases(w, good) + batch_cases(w, good) + worker_cases(w, good)
                 + slicer_cases(w, good))
        print("| # | via | input | exit code | message | no output left | input untouched | "
              "time s | peak MB | ok |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        outcomes = []
        for number, case in enumerate(cases, 1):
            outcome = execute(case)
            outcomes.append(outcome)
            message = outcome.message.replace("|", "/").replace(str(w) + "/", "")
            message = message.removeprefix("neuroad: error: ")
            message = message if len(message) <= 110 else message[:109] + "…"
            print(f"| {number} | {case.via} | {case.name} | {outcome.code} | {message} | "
                  f"{'yes' if outcome.clean else 'NO'} | "
                  f"{'yes' if outcome.untouched else 'NO'} | {outcome.seconds:.1f} | "
                  f"{outcome.peak_mb:.0f} | {'yes' if outcome.passed(case) else 'NO'} |",
                  flush=True)
    failed = [c.name for c, o in zip(cases, outcomes, strict=True) if not o.passed(c)]
    slowest = max(outcomes, key=lambda o: o.seconds)
    largest = max(outcomes, key=lambda o: o.peak_mb)
    print(f"\n{len(cases)} cases, {len(cases) - len(failed)} handled as expected; worst time "
          f"{slowest.seconds:.1f} s, worst peak memory {largest.peak_mb:.0f} MB "
          f"(limits {WORST_SECONDS:.0f} s, {WORST_MB / 1024:.0f} GB)."
          + (f" Failed: {', '.join(failed)}." if failed else ""))
    within = slowest.seconds < WORST_SECONDS and largest.peak_mb < WORST_MB
    return 0 if not failed and within else 1


if __name__ == "__main__":
    sys.exit(main())
