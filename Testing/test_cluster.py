"""`neuroad batch` on a Dask cluster: the same outputs as a local batch, nothing lost or half
written when a worker or the client dies, bad rows failing alone, a bounded window of cases,
shards and their merge, and the SLURM job a config asks for."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time

import dask
import numpy as np
import pytest
import SimpleITK as sitk
from conftest import IXI, require

from NeuroADLib import cluster as cluster_module
from NeuroADLib.batch import STAGING, merge_shards, parse_shard, run_batch
from NeuroADLib.cluster import read_slurm_config, slurm_cluster, window_size
from NeuroADLib.errors import EXIT_BAD_INPUT, ClusterError, UsageError

distributed = pytest.importorskip("distributed")

OUTPUTS = ("anomaly_map.nii.gz", "pseudo_healthy.nii.gz", "anomaly_mask.nii.gz")


@pytest.fixture(scope="module")
def client():
    """One cluster of two worker processes for the module (each imports torch once)."""
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=None)
    with distributed.Client(cluster) as client:
        yield client
    cluster.close()


def ixi_rows(names: list[str]) -> list[str]:
    """Table lines (path,age,sex) of IXI scans, with their ages and sexes from IXI's table."""
    with require(IXI / "participants.csv").open() as handle:
        subjects = {row["subject"]: row for row in csv.DictReader(handle)}
    return [f"{IXI / subjects[name]['file']},{subjects[name]['age']},{subjects[name]['sex']}"
            for name in names]


def write_table(path, lines: list[str]):
    path.write_text("path,age,sex\n" + "\n".join(lines) + "\n")
    return path


def read_summary(path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def neuroad(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "NeuroADLib", *args], capture_output=True,
                          text=True, timeout=600, **kwargs)


def leftovers(out) -> list:
    """Staging folders or files a batch should not leave behind."""
    return [p for p in out.rglob("*") if ".partial-" in p.name or p.name == STAGING
            or p.name.endswith(".tmp")]


@pytest.mark.slow
def test_a_cluster_batch_equals_the_local_batch_bit_for_bit(client, tmp_path):
    good = ixi_rows(["IXI012-HH-1211", "IXI013-HH-1212"])
    bad_age = ixi_rows(["IXI015-HH-1258"])[0].split(",")[0] + ",abc,F"
    table = write_table(tmp_path / "cases.csv",
                        [good[0], f"{tmp_path / 'missing.nii.gz'},50,F", good[1], bad_age])
    local = neuroad("batch", str(table), "--method", "zscore", "--out", str(tmp_path / "local"),
                    "--threads", "1", "--quiet")
    assert local.returncode == EXIT_BAD_INPUT, local.stderr
    events = []
    summary = run_batch(table, ["zscore"], tmp_path / "cluster", show_progress=False,
                        cluster=client, threads=1, on_event=events.append)
    local_rows = read_summary(tmp_path / "local" / "summary.csv")
    assert read_summary(summary) == local_rows
    assert [r["status"] for r in local_rows] == ["ok", "failed", "ok", "failed"]
    assert "not found" in local_rows[1]["message"] and "abc" in local_rows[3]["message"]
    for row in local_rows:
        if row["status"] != "ok":
            assert not (tmp_path / "cluster" / row["case"]).exists()
            continue
        for name in OUTPUTS:
            ours = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "cluster" / row["case"]
                                                             / name)))
            theirs = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "local" / row["case"]
                                                               / name)))
            assert np.array_equal(ours, theirs), (row["case"], name)
    assert leftovers(tmp_path / "cluster") == []
    last = [e for e in events if e["event"] == "batch"][-1]
    assert (last["total"], last["done"], last["failed"], last["running"]) == (4, 2, 2, 0)
    assert sorted(e["case"] for e in events if e["event"] == "case") == sorted(
        r["case"] for r in local_rows)
    workers = json.loads((tmp_path / "cluster" / "cluster.json").read_text())["workers"]
    assert all(w["model_loads"] <= 1 and w["threads"] == 1 for w in workers.values())


def kill_the_worker_running_a_case(client, timeout_s: float = 120) -> int:
    """SIGKILL the worker process that runs a NeuroAD task; its pid."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for address, keys in client.processing().items():
            if any(str(key).startswith("neuroad-") for key in keys):
                pid = client.run(os.getpid, workers=[address])[address]
                os.kill(pid, signal.SIGKILL)
                return pid
        time.sleep(0.2)
    raise AssertionError("no case started")


@pytest.mark.slow
def test_a_worker_killed_mid_case_loses_nothing(client, tmp_path):
    table = write_table(tmp_path / "cases.csv", ixi_rows(["IXI033-HH-1259", "IXI034-HH-1260"]))
    out = tmp_path / "out"
    result: dict = {}
    batch = threading.Thread(target=lambda: result.update(summary=run_batch(
        table, ["zscore"], out, show_progress=False, cluster=client, threads=1)))
    batch.start()
    pid = kill_the_worker_running_a_case(client)
    batch.join(timeout=300)
    assert not batch.is_alive()
    rows = read_summary(result["summary"])
    assert sorted(r["case"] for r in rows) == ["IXI033-HH-1259_T1", "IXI034-HH-1260_T1"]
    assert all(r["status"] == "ok" for r in rows), rows  # redone on another worker
    assert all((out / r["case"] / "report.json").is_file() for r in rows)
    assert leftovers(out) == []
    workers = json.loads((out / "cluster.json").read_text())["workers"]
    assert pid not in [worker["pid"] for worker in workers.values()]  # a restarted process


@pytest.mark.slow
def test_a_case_whose_workers_keep_dying_is_a_failed_row_not_a_hang(tmp_path):
    table = write_table(tmp_path / "cases.csv", ixi_rows(["IXI051-HH-1328"]))
    out = tmp_path / "out"
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        cluster = distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                           dashboard_address=":0")
    with cluster, distributed.Client(cluster) as client:
        result: dict = {}
        batch = threading.Thread(target=lambda: result.update(summary=run_batch(
            table, ["zscore"], out, show_progress=False, cluster=client, threads=1)))
        batch.start()
        kill_the_worker_running_a_case(client)
        batch.join(timeout=120)
        assert not batch.is_alive()
    (row,) = read_summary(result["summary"])
    assert row["status"] == "failed" and row["exit_code"] == "1"
    assert "died" in row["message"] and "allowed-failures" in row["message"]
    assert not (out / row["case"]).exists() and leftovers(out) == []


def test_staging_left_by_dead_attempts_is_removed_at_the_end(client, tmp_path):
    table = write_table(tmp_path / "cases.csv", [f"{tmp_path / 'gone.nii.gz'},50,F"])
    out = tmp_path / "out"
    dead_here = out / STAGING / ".gone.partial-999999999@" f"{os.uname().nodename}-x"
    elsewhere = out / STAGING / ".gone.partial-4242@node7.cluster-y"
    for folder in (dead_here, elsewhere):
        folder.mkdir(parents=True)
        (folder / "anomaly_map.nii.gz").write_bytes(b"half")
    run_batch(table, ["zscore"], out, show_progress=False, cluster=client)
    assert leftovers(out) == []


@pytest.mark.slow
def test_an_interrupted_batch_resumes_without_redoing_finished_cases(tmp_path):
    table = write_table(tmp_path / "cases.csv",
                        ixi_rows(["IXI039-HH-1261", "IXI048-HH-1326", "IXI049-HH-1358"]))
    out = tmp_path / "out"
    client_process = subprocess.Popen(
        [sys.executable, "-m", "NeuroADLib", "batch", str(table), "--method", "zscore",
         "--out", str(out), "--cluster", "local:2", "--threads", "1", "--events"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    first = None
    for line in client_process.stdout:
        event = json.loads(line)
        if event["event"] == "case" and event["status"] == "ok":
            first = event["case"]
            break
    os.killpg(client_process.pid, signal.SIGKILL)  # the client and its cluster, mid-batch
    client_process.wait()
    assert first is not None
    report = out / first / "report.json"
    stamp = report.stat().st_mtime_ns
    summary = run_batch(table, ["zscore"], out, show_progress=False)
    rows = {r["case"]: r for r in read_summary(summary)}
    assert len(rows) == 3 and rows[first]["status"] == "done before"
    assert all(r["status"] in ("ok", "done before") for r in rows.values())
    assert report.stat().st_mtime_ns == stamp
    assert leftovers(out) == []


def test_cuda_cases_need_a_worker_that_offers_a_gpu(client, tmp_path):
    table = write_table(tmp_path / "cases.csv", [f"{tmp_path / 'scan.nii.gz'},50,F"])
    with pytest.raises(ClusterError, match="offers the GPU resource.*--resources GPU=1"):
        run_batch(table, ["zscore"], tmp_path / "out", show_progress=False, cluster=client,
                  device="cuda")
    assert not (tmp_path / "out").exists()
    config = tmp_path / "slurm.yaml"
    config.write_text("cores: 4\nmemory: 8GB\n")
    with pytest.raises(UsageError, match="set gpus"):
        run_batch(table, ["zscore"], tmp_path / "out", show_progress=False, cluster="slurm",
                  cluster_config=config, device="cuda")


@pytest.mark.slow
def test_cuda_cases_on_local_workers_without_cuda_fail_alone_and_never_hang(tmp_path):
    table = write_table(tmp_path / "cases.csv", ixi_rows(["IXI052-HH-1343"]))
    summary = run_batch(table, ["zscore"], tmp_path / "out", show_progress=False,
                        cluster="local:1", threads=1, device="cuda")
    (row,) = read_summary(summary)
    if row["status"] == "ok":  # a machine with a CUDA GPU
        return
    assert row["exit_code"] == str(UsageError.exit_code) and "no CUDA GPU" in row["message"]
    assert leftovers(tmp_path / "out") == []


def test_the_window_of_cases_in_flight_is_bounded(client, tmp_path):
    table = write_table(tmp_path / "cases.csv",
                        [f"{tmp_path / f'scan{i}.nii.gz'},50,F" for i in range(30)])
    events = []
    summary = run_batch(table, ["zscore"], tmp_path / "out", show_progress=False,
                        cluster=client, on_event=events.append)
    rows = read_summary(summary)
    assert len(rows) == 30 and all(r["status"] == "failed" for r in rows)
    assert [r["case"] for r in rows] == [f"scan{i}" for i in range(30)]  # the table's order
    running = [e["running"] for e in events if e["event"] == "batch"]
    assert max(running) <= window_size(client) == 4


def test_shards_cover_the_table_once_and_merge_in_its_order(tmp_path):
    table = write_table(tmp_path / "cases.csv",
                        [f"{tmp_path / f'scan{i}.nii.gz'},50,F" for i in range(5)])
    out = tmp_path / "out"
    with pytest.raises(UsageError, match="No shard summaries"):
        merge_shards(table, out)
    first = run_batch(table, ["zscore"], out, show_progress=False, shard="0/2")
    assert [r["case"] for r in read_summary(first)] == ["scan0", "scan2", "scan4"]
    with pytest.raises(UsageError, match="Shard\\(s\\) 1 of 2"):
        merge_shards(table, out)
    run_batch(table, ["zscore"], out, show_progress=False, shard="1/2")
    merged = read_summary(merge_shards(table, out))
    assert [r["case"] for r in merged] == [f"scan{i}" for i in range(5)]
    rows = read_summary(out / "summary.shard-1-of-2.csv")
    (out / "summary.shard-1-of-2.csv").write_text(  # as if shard 1 had been interrupted
        "case,path,status,exit_code,message\n" + ",".join(rows[0].values()) + "\n")
    with pytest.raises(UsageError, match="1 case\\(s\\).*first: scan3.*shard\\(s\\) 1 of 2"):
        merge_shards(table, out)


@pytest.mark.parametrize("text", ["2/2", "1", "a/b", "-1/3", "0/0"])
def test_a_shard_is_i_of_n(text):
    with pytest.raises(UsageError, match="0 <= I < N"):
        parse_shard(text)


def test_the_cli_merges_shards_and_refuses_a_bad_cluster_spec(tmp_path):
    table = write_table(tmp_path / "cases.csv", [f"{tmp_path / 'scan.nii.gz'},50,F"])
    bad = neuroad("batch", str(table), "--method", "zscore", "--out", str(tmp_path / "out"),
                  "--cluster", "local:zero")
    assert bad.returncode == UsageError.exit_code and "local:N" in bad.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    shard = neuroad("batch", str(table), "--method", "zscore", "--out", str(tmp_path / "out"),
                    "--shard", "0/1", "--quiet")
    assert shard.returncode == EXIT_BAD_INPUT
    merged = neuroad("batch-merge", str(table), "--out", str(tmp_path / "out"))
    assert merged.returncode == EXIT_BAD_INPUT and "0 cases done, 1 failed" in merged.stdout


def test_without_dask_or_scheduler_the_error_says_what_to_do(tmp_path, monkeypatch):
    table = write_table(tmp_path / "cases.csv", [f"{tmp_path / 'scan.nii.gz'},50,F"])
    monkeypatch.setattr(cluster_module, "CONNECT_TIMEOUT", "1s")
    with pytest.raises(ClusterError, match="Cannot reach the Dask scheduler"):
        run_batch(table, ["zscore"], tmp_path / "out", show_progress=False,
                  cluster="tcp://127.0.0.1:9")
    monkeypatch.setattr(cluster_module, "distributed", None)
    with pytest.raises(ClusterError, match='pip install "neuroad\\[cluster\\]"'):
        run_batch(table, ["zscore"], tmp_path / "out", show_progress=False, cluster="local:1")


@pytest.mark.parametrize("suffix", [".yaml", ".toml"])
def test_the_slurm_job_script_holds_the_requested_resources(tmp_path, suffix):
    yaml_text = ("cores: 8\nmemory: 32GB\nwalltime: '02:00:00'\nqueue: gpu\naccount: neuro\n"
                 "gpus: 1\nadaptive: {minimum: 0, maximum: 10}\n"
                 "job_script_prologue: ['module load cuda', 'source ~/venv/bin/activate']\n")
    toml_text = ('cores = 8\nmemory = "32GB"\nwalltime = "02:00:00"\nqueue = "gpu"\n'
                 'account = "neuro"\ngpus = 1\njob_script_prologue = ["module load cuda", '
                 '"source ~/venv/bin/activate"]\n[adaptive]\nminimum = 0\nmaximum = 10\n')
    path = tmp_path / f"slurm{suffix}"
    path.write_text(yaml_text if suffix == ".yaml" else toml_text)
    config = read_slurm_config(path)
    assert (config.adaptive_minimum, config.adaptive_maximum, config.task_threads) == (0, 10, 4)
    cluster = slurm_cluster(config)  # builds the job; submits nothing
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    for expected in ("#SBATCH -p gpu", "#SBATCH -A neuro", "#SBATCH -n 1",
                     "#SBATCH --cpus-per-task=8", "#SBATCH --mem=30G", "#SBATCH -t 02:00:00",
                     "#SBATCH --gres=gpu:1", "--resources GPU=1", "--nthreads 2",
                     "module load cuda"):
        assert expected in script, (expected, script)


def test_a_slurm_config_with_unknown_or_missing_settings_is_refused(tmp_path):
    path = tmp_path / "slurm.yaml"
    path.write_text("cores: 8\nmemory: 32GB\ngpu: 1\n")
    with pytest.raises(UsageError, match="unknown setting\\(s\\) gpu"):
        read_slurm_config(path)
    path.write_text("memory: 32GB\n")
    with pytest.raises(UsageError, match="cores and memory are needed"):
        read_slurm_config(path)
    path.write_text("cores: 8\nmemory: 32GB\ngpus: 2\nprocesses: 2\n")
    with pytest.raises(UsageError, match="processes: 1"):
        read_slurm_config(path)
