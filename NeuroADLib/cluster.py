"""`neuroad batch --cluster`: the cases of a batch on a Dask cluster (pip install
"neuroad[cluster]").

Each case is two tasks: `prepare_case` (read, check, preprocess: CPU) and `infer_case` (the
methods, on a worker holding a GPU when `--device cuda`), so that registration never idles a
GPU. A `NeuroADWorker` plugin sets each worker process's torch and ITK thread counts and keeps
the models it loads, lazily, for its next cases. A task may run twice (a worker that died, one
thought dead): every attempt assembles its outputs in its own staging folder and publishes them
with one rename, and a case already published counts as done. A scan that fails returns a
failed row (not retried); a case whose worker died is retried elsewhere by Dask and after
`distributed.scheduler.allowed-failures` deaths (3 by default) becomes a failed row. Only the
client writes the summary. At most about two cases per worker thread are submitted at a time,
so that the client's memory stays flat for tables of 50,000 cases.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

from .batch import (
    STAGING,
    BatchProgress,
    Summary,
    case_age,
    case_entry,
    case_path,
    done_reports,
    failed_entry,
)
from .errors import EXIT_INTERNAL, ClusterError, UsageError

if TYPE_CHECKING:  # the engine's heavy imports wait for a worker's first task
    from .pipeline import PreparedScan
    from .subject import Subject

try:  # an optional extra: without it, --cluster says how to install it
    import distributed
    from distributed.diagnostics.plugin import WorkerPlugin
except ImportError:
    distributed = None
    WorkerPlugin = object

PLUGIN = "neuroad"
CONNECT_TIMEOUT = "20s"  # to reach a running scheduler
SPEC_HELP = ("local:N (N worker processes on this machine), a scheduler address "
             "(tcp://host:8786), a scheduler file (scheduler.json), or slurm with "
             "--cluster-config FILE")


def _dask():
    """distributed, or a ClusterError that says how to install it."""
    if distributed is None:
        raise ClusterError('--cluster needs Dask: pip install "neuroad[cluster]" (dask, '
                           "distributed, dask-jobqueue).")
    return distributed


# --- on the workers -------------------------------------------------------------------------

def _available_cores() -> int:
    """The cores this process may use (a SLURM allocation, a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


class NeuroADWorker(WorkerPlugin):
    """Worker plugin: per worker process, torch's and ITK's thread counts (set explicitly: the
    nanny sets OMP_NUM_THREADS=1 and ITK would take every core), and the models, loaded by
    the first case that needs them, from the verified bundle, and kept. Setting up runs on
    the worker's event loop, so the heavy imports wait for the first task."""

    name = PLUGIN

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads
        self.loaded: dict = {}
        self.stats = {"cases": 0, "model_loads": 0, "model_load_s": 0.0, "import_s": None}
        self._configured = False

    def setup(self, worker) -> None:
        self.worker_name = str(worker.name)
        self.worker_threads = worker.state.nthreads

    def configure(self) -> None:
        """Import the engine and set thread counts, once per process (timed)."""
        if self._configured:
            return
        start = time.perf_counter()
        import SimpleITK as sitk
        import torch

        from . import pipeline  # noqa: F401 - the engine's imports, timed here

        threads = self.threads or max(1, _available_cores() // max(self.worker_threads, 1))
        torch.set_num_threads(threads)
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
        self.stats["import_s"] = round(time.perf_counter() - start, 3)
        self.stats["threads"] = threads
        self._configured = True

    def load(self, methods: list[str], options: dict) -> dict:
        from .pipeline import load_methods

        before, start = len(self.loaded), time.perf_counter()
        loaded = load_methods(methods, options, self.loaded)
        if len(self.loaded) > before:
            self.stats["model_loads"] += len(self.loaded) - before
            self.stats["model_load_s"] += time.perf_counter() - start
        return loaded


def _plugin() -> NeuroADWorker:
    worker = _dask().get_worker()
    plugin = worker.plugins.get(PLUGIN)
    if plugin is None:  # a worker that joined without it (it is registered for all)
        plugin = NeuroADWorker()
        plugin.setup(worker)
        worker.plugins[PLUGIN] = plugin
    plugin.configure()
    return plugin


@dataclass
class PreparedCase:
    """What `prepare_case` hands to `infer_case`: the subject and the scan on the grid."""

    subject: Subject
    scan: PreparedScan


def prepare_case(row: dict, methods: list[str], options: dict, seed: int = 0):
    """The CPU task: check the row and its scan, preprocess it. A failed row (dict) when the
    case cannot run: it is not retried, the same scan would fail again."""
    _plugin()
    from .guards import check_run
    from .pipeline import check_covariates, prepare_scan

    try:
        subject = check_covariates(case_age(row), row["sex"].upper())
        brain_mask = row["brain_mask"] or None
        check_run(case_path(row), methods, brain_mask, options)
        return PreparedCase(subject, prepare_scan(row["path"], brain_mask, seed))
    except Exception as error:  # noqa: BLE001 - a case's failure is its row
        return failed_entry(row, error)


def infer_case(prepared, row: dict, methods: list[str], out: str, device: str,
               options: dict) -> dict:
    """The inference task: the methods on the prepared scan, published whole into
    out/<case>/. Returns {"entry": summary row, "worker": this worker's figures}."""
    plugin = _plugin()
    folder = Path(out) / row["case"]
    if isinstance(prepared, dict):
        entry = prepared
    elif (reports := done_reports(folder, methods)) is not None:  # another attempt's
        entry = case_entry(row, reports)
    else:
        entry = _infer(plugin, prepared, row, methods, folder, device, options)
        plugin.stats["cases"] += 1
    return {"entry": entry, "worker": {"name": plugin.worker_name, "pid": os.getpid(),
                                       **plugin.stats}}


def _infer(plugin: NeuroADWorker, prepared: PreparedCase, row: dict, methods: list[str],
           folder: Path, device: str, options: dict) -> dict:
    from .pipeline import run_methods, run_steps
    from .progress import Progress

    try:
        start = time.perf_counter()
        loaded = plugin.load(methods, options)
        reports = run_methods(prepared.scan, loaded, prepared.subject, folder,
                              Progress(total=run_steps(methods)), device, options,
                              {"load_models": time.perf_counter() - start},
                              folder.parent / STAGING)
    except Exception as error:  # noqa: BLE001 - a case's failure is its row
        reports = done_reports(folder, methods)  # published by another attempt meanwhile
        if reports is None:
            return failed_entry(row, error)
    return case_entry(row, reports)


# --- on the client --------------------------------------------------------------------------

@dataclass
class SlurmConfig:
    """A SLURM job of workers (dask_jobqueue.SLURMCluster), from a YAML or TOML file.
    `jobs` starts that many at once; `adaptive_minimum`/`adaptive_maximum` instead let Dask
    scale between them with the queue of cases. `gpus` per job adds --gres=gpu:N and gives
    each worker the GPU resource that `--device cuda` cases ask for."""

    cores: int
    memory: str
    walltime: str = "01:00:00"
    queue: str | None = None
    account: str | None = None
    processes: int = 1
    threads_per_worker: int | None = None
    gpus: int = 0
    jobs: int = 1
    adaptive_minimum: int | None = None
    adaptive_maximum: int | None = None
    job_script_prologue: list[str] = field(default_factory=list)
    job_extra_directives: list[str] = field(default_factory=list)
    local_directory: str | None = None
    log_directory: str | None = None
    python: str | None = None

    @property
    def worker_threads(self) -> int:
        """Task slots per worker process: with a GPU, two (one preprocesses the next case
        while the other holds the GPU); without, one."""
        return self.threads_per_worker or (2 if self.gpus else 1)

    @property
    def task_threads(self) -> int:
        """torch/ITK threads per task: the job's cores over its concurrent tasks."""
        return max(1, self.cores // (self.processes * self.worker_threads))

    def cluster_kwargs(self) -> dict:
        extra_args = ["--nthreads", str(self.worker_threads)]
        directives = list(self.job_extra_directives)
        if self.gpus:
            extra_args += ["--resources", f"GPU={self.gpus}"]
            directives.append(f"--gres=gpu:{self.gpus}")
        kwargs = {"cores": self.cores, "memory": self.memory, "walltime": self.walltime,
                  "processes": self.processes, "queue": self.queue, "account": self.account,
                  "worker_extra_args": extra_args, "job_extra_directives": directives,
                  "job_script_prologue": list(self.job_script_prologue),
                  "local_directory": self.local_directory, "log_directory": self.log_directory,
                  "python": self.python}
        return {key: value for key, value in kwargs.items() if value is not None}


def read_slurm_config(path: str | os.PathLike) -> SlurmConfig:
    """The SLURM settings of a YAML (.yaml/.yml) or TOML (.toml) file; unknown or missing
    keys are refused by name."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"Cluster config not found: {path}")
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            import tomllib

            values = tomllib.loads(text)
        else:
            import yaml

            values = yaml.safe_load(text)
    except Exception as error:  # noqa: BLE001 - any parse error is the file's
        raise UsageError(f"Cluster config {path} cannot be read: {error}") from None
    if not isinstance(values, dict):
        raise UsageError(f"Cluster config {path} must be a mapping of settings.")
    values = dict(values)
    adaptive = values.pop("adaptive", None)
    if isinstance(adaptive, dict):
        values["adaptive_minimum"] = adaptive.get("minimum", 0)
        values["adaptive_maximum"] = adaptive.get("maximum")
    known = {f.name for f in fields(SlurmConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        named = sorted(known - {"adaptive_minimum", "adaptive_maximum"}) + ["adaptive"]
        raise UsageError(f"Cluster config {path}: unknown setting(s) {', '.join(unknown)}; "
                         f"known: {', '.join(named)}.")
    try:
        config = SlurmConfig(**values)
    except TypeError as error:
        raise UsageError(f"Cluster config {path}: {error} (cores and memory are needed, e.g. "
                         "cores: 8, memory: 32GB).") from None
    if config.gpus and config.processes > 1:
        raise UsageError(f"Cluster config {path}: with gpus, keep one worker process per job "
                         "(processes: 1): every process of a job would claim all its GPUs.")
    return config


def slurm_cluster(config: SlurmConfig):
    """A dask_jobqueue.SLURMCluster for `config`; no job is submitted until `start_jobs`."""
    _dask()
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError:
        raise ClusterError('--cluster slurm needs dask-jobqueue: pip install '
                           '"neuroad[cluster]".') from None
    return SLURMCluster(**config.cluster_kwargs())


def start_jobs(cluster, config: SlurmConfig) -> None:
    """Submit the jobs: a fixed number, or adaptive between the config's bounds."""
    if config.adaptive_maximum is not None:
        cluster.adapt(minimum_jobs=config.adaptive_minimum or 0,
                      maximum_jobs=config.adaptive_maximum)
    else:
        cluster.scale(jobs=config.jobs)


@dataclass
class ClusterConnection:
    """A client of the batch's cluster, the torch/ITK threads each task gets (None: the
    worker's cores over its task slots), and `close`, which shuts down what `connect`
    started and nothing else."""

    client: object
    spec: str
    threads: int | None = None
    started: tuple = ()
    owns_client: bool = True

    def close(self) -> None:
        if self.owns_client:
            self.client.close()
        for cluster in self.started:
            cluster.close()


def connect(spec, cluster_config: str | os.PathLike | None = None, threads: int | None = None,
            device: str = "auto") -> ClusterConnection:
    """Connect to (or start) the cluster a SPEC names (see SPEC_HELP), or use a Client. With
    `device` cuda, the cluster must offer workers with the GPU resource (local:N gives each
    worker one), or the cases' inference tasks would wait for ever."""
    distributed = _dask()
    if isinstance(spec, distributed.Client):
        connection = ClusterConnection(spec, spec.scheduler_info().get("address", "client"),
                                       threads, owns_client=False)
        return _with_gpu_workers(connection, device)
    spec = str(spec)
    if cluster_config is not None and spec != "slurm":
        raise UsageError("--cluster-config goes with --cluster slurm.")
    if spec.startswith("local:"):
        count = spec.partition(":")[2]
        if not count.isdigit() or int(count) < 1:
            raise UsageError(f"--cluster {spec}: local:N needs a worker count N >= 1.")
        workers = int(count)
        cluster = distributed.LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
            resources={"GPU": 1} if device == "cuda" else None)
        return ClusterConnection(distributed.Client(cluster), spec,
                                 threads or max(1, _available_cores() // workers), (cluster,))
    if spec == "slurm":
        if cluster_config is None:
            raise UsageError("--cluster slurm needs --cluster-config FILE (cores, memory, "
                             "walltime, queue, gpus, jobs or adaptive; see the README).")
        config = read_slurm_config(cluster_config)
        if device == "cuda" and not config.gpus:
            raise UsageError(f"--device cuda needs GPU workers: set gpus (per job) in "
                             f"{cluster_config}, or use --device auto.")
        cluster = slurm_cluster(config)
        start_jobs(cluster, config)
        return ClusterConnection(distributed.Client(cluster), spec,
                                 threads or config.task_threads, (cluster,))
    try:
        if "://" in spec:
            client = distributed.Client(spec, timeout=CONNECT_TIMEOUT)
        elif spec.endswith(".json"):
            if not Path(spec).is_file():
                raise UsageError(f"--cluster {spec}: no such scheduler file.")
            client = distributed.Client(scheduler_file=spec, timeout=CONNECT_TIMEOUT)
        else:
            raise UsageError(f"--cluster {spec!r} is not a cluster: give {SPEC_HELP}.")
    except OSError as error:
        raise ClusterError(f"Cannot reach the Dask scheduler {spec} ({error}): start it "
                           "(`dask scheduler`) or check the address.") from None
    return _with_gpu_workers(ClusterConnection(client, spec, threads), device)


def _with_gpu_workers(connection: ClusterConnection, device: str) -> ClusterConnection:
    """The connection, once sure that --device cuda cases can be placed (a worker offers the
    GPU resource); otherwise closed, with a ClusterError that says how to start one."""
    if device != "cuda":
        return connection
    workers = connection.client.scheduler_info().get("workers", {}).values()
    if any(worker.get("resources", {}).get("GPU", 0) > 0 for worker in workers):
        return connection
    connection.close()
    raise ClusterError(f"No worker of the cluster {connection.spec} offers the GPU resource "
                       "that --device cuda cases run on: start GPU workers with `dask worker "
                       "SCHEDULER --resources GPU=1` (one per GPU), or use --device auto.")


def window_size(client) -> int:
    """How many cases may be in flight: two per worker thread (one running, one waiting), at
    least two, recomputed as workers come and go."""
    return max(2, 2 * sum(client.nthreads().values()))


def run_on_cluster(connection: ClusterConnection, rows: list[dict], methods: list[str],
                   out: Path, summary: Summary, progress: BatchProgress, device: str = "auto",
                   options: dict | None = None, seed: int = 0) -> dict:
    """Run `rows` on the cluster, adding each finished case to `summary` and `progress`;
    returns what each worker process reported last (for cluster.json)."""
    options = options or {}
    client = connection.client
    resources = {"GPU": 1} if device == "cuda" else None
    workers: dict[str, dict] = {}
    client.register_plugin(NeuroADWorker(connection.threads), name=PLUGIN)
    queue = iter(rows)
    in_flight: dict = {}
    finished = distributed.as_completed()

    def submit_more() -> None:
        while len(in_flight) < window_size(client):
            row = next(queue, None)
            if row is None:
                break
            attempt = f"{row['case']}-{uuid.uuid4().hex}"
            prepared = client.submit(prepare_case, row, methods, options, seed,
                                     key=f"neuroad-prepare-{attempt}")
            inferred = client.submit(infer_case, prepared, row, methods, str(out), device,
                                     options, resources=resources,
                                     key=f"neuroad-infer-{attempt}")
            in_flight[inferred] = (row, prepared)
            finished.add(inferred)
        progress.running = len(in_flight)

    submit_more()
    for future in finished:
        row, prepared = in_flight.pop(future)
        entry = _collect(future, row, workers, client)
        prepared.release()
        future.release()
        summary.add(entry)
        submit_more()
        progress.finished(entry)
    return workers


def _collect(future, row: dict, workers: dict, client) -> dict:
    """The case's summary row from its finished inference future."""
    try:
        result = future.result()
    except distributed.KilledWorker as error:
        return failed_entry(row, exit_code=EXIT_INTERNAL,
                            message=f"the workers running this case died ({error}); it was "
                            "retried up to distributed.scheduler.allowed-failures times: see "
                            "the worker logs (memory, time limit)")
    except Exception as error:  # noqa: BLE001 - the scheduler or the connection
        if client.status != "running":
            raise ClusterError(f"Lost the Dask scheduler ({error}); finished cases are "
                               "kept: run the batch again to resume.") from None
        return failed_entry(row, error)
    workers[result["worker"]["name"]] = result["worker"]
    return result["entry"]
