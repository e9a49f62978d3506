"""Where the tasks of :func:`ibcore.tasks.run_experiments` run.

* :class:`InProcessLauncher` — one after another in this process (the default, ``--workers 1``).
* :class:`LocalPoolLauncher` — ``N`` worker processes on this machine (``--workers N``); each
  worker is a fresh process per task (a killed worker loses only its own task) with
  ``max(1, cores // N)`` torch threads.
* :class:`RayLauncher` — tasks on a Ray cluster (``--launcher ray``; ``ray.init(address)``, a
  local Ray instance when no address is given). Needs ``pip install ibcore[cluster]``.
* :class:`SlurmLauncher` — one Slurm job per task through ``submitit`` (``--launcher slurm``), or
  submitit's local executor for testing. Needs ``pip install ibcore[cluster]``.

Every launcher runs a task only when the tasks named in its ``after`` have succeeded; a failed
task is reported with its key and error and the others go on; tasks that needed it are reported
as not started. Checkpoints and evaluation files are written by the tasks themselves, so remote
launchers need the results folder (and ``runs/`` beside it) on a file system the workers share.
Interrupting the parent (Ctrl-C, SIGTERM) stops the workers; their last checkpoints stay, and
``--resume`` continues from them.
"""

from __future__ import annotations

import multiprocessing as mp
import multiprocessing.connection
import os
import signal
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ibcore.errors import UnknownNameError
from ibcore.tasks import RunRequest, Task, TaskFailure, execute_tasks, run_one
from ibcore.validation import check_int

LAUNCHERS: tuple[str, ...] = ("local", "ray", "slurm")


def _log(message: str) -> None:
    tqdm.write(f"[tasks] {message}")


class _Scheduler:
    """Dependency-aware bookkeeping shared by the launchers: which tasks may start, what failed."""

    def __init__(self, tasks: Sequence[Task], progress: bool) -> None:
        self.pending = list(tasks)
        self.done: set[str] = set()
        self.failures: list[TaskFailure] = []
        self.bar = tqdm(total=len(tasks), desc="tasks", unit="task", disable=not progress,
                        dynamic_ncols=True)

    def ready(self) -> list[Task]:
        """Tasks whose prerequisites succeeded; tasks with a failed prerequisite are failed."""
        failed = {f.key for f in self.failures}
        out = []
        for t in list(self.pending):
            blocked = [k for k in t.after if k in failed]
            if blocked:
                self.pending.remove(t)
                self.fail(t.key, f"not started: it needs {', '.join(blocked)}, which failed")
            elif all(k in self.done for k in t.after):
                out.append(t)
        return out

    def take(self, task: Task) -> None:
        self.pending.remove(task)

    def succeed(self, key: str, seconds: float) -> None:
        self.done.add(key)
        self.bar.update(1)
        _log(f"done {key} ({seconds:.1f} s)")

    def fail(self, key: str, error: str) -> None:
        self.failures.append(TaskFailure(key, error))
        self.bar.update(1)
        last = error.strip().splitlines()[-1] if error.strip() else "?"
        _log(f"FAILED {key}: {last}")

    def close(self) -> list[TaskFailure]:
        self.bar.close()
        return self.failures


class InProcessLauncher:
    """Run the tasks one after another in this process, in the planned order."""

    def describe(self) -> dict[str, Any]:
        return {"launcher": "in-process", "workers": 1}

    def execute(self, request: RunRequest, tasks: Sequence[Task], *, ctx: Any) -> list[TaskFailure]:
        sched = _Scheduler(tasks, progress=False)
        while sched.pending:
            ready = sched.ready()
            if not ready:
                break
            task = ready[0]
            sched.take(task)
            try:
                seconds = run_one(request, ctx, task)
            except Exception:  # noqa: BLE001 - reported with its key; the other tasks go on
                error = traceback.format_exc()
                tqdm.write(error)
                sched.fail(task.key, error)
                continue
            sched.succeed(task.key, seconds)
        return sched.close()


def _pool_worker(request: RunRequest, threads: int, conn: Any) -> None:
    """Body of one local worker process: build the context once, then run the tasks it is sent.

    Replies ``("done", key, seconds)`` or ``("error", key, traceback)``; ``None`` ends it.
    """
    import torch

    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM unwinds like Ctrl-C
    torch.set_num_threads(threads)
    ctx = None
    while True:
        task = conn.recv()
        if task is None:
            return
        try:
            if ctx is None:
                ctx = request.context(progress=False)
            conn.send(("done", task.key, run_one(request, ctx, task)))
        except KeyboardInterrupt:
            return
        except BaseException:  # noqa: BLE001 - sent back with the task's key
            conn.send(("error", task.key, traceback.format_exc()))


class _Worker:
    def __init__(self, mpctx: Any, request: RunRequest, threads: int, number: int) -> None:
        self.conn, child = mpctx.Pipe()
        self.proc = mpctx.Process(target=_pool_worker, args=(request, threads, child),
                                  name=f"ibcore-worker-{number}", daemon=True)
        self.proc.start()
        child.close()
        self.task: Task | None = None
        self.t0 = 0.0

    def send(self, task: Task) -> None:
        self.task, self.t0 = task, time.perf_counter()
        self.conn.send(task)

    def stop(self, timeout: float = 30.0) -> None:
        """End the process: a moment to exit by itself when idle, then SIGTERM, then SIGKILL."""
        if self.task is None:
            self.proc.join(timeout=5.0)
        if self.proc.is_alive():
            self.proc.terminate()
        self.proc.join(timeout=timeout)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()


class LocalPoolLauncher:
    """Run the tasks on ``workers`` local processes (``spawn``-ed; each builds its context once).

    A worker that dies (killed, out of memory) fails only the task it was running; a fresh
    worker takes its place.
    """

    def __init__(self, workers: int, threads: int | None = None) -> None:
        self.workers = check_int("workers", workers, low=1)
        cores = os.cpu_count() or 1
        self.threads = threads if threads is not None else max(1, cores // self.workers)

    def describe(self) -> dict[str, Any]:
        return {"launcher": "local", "workers": self.workers, "threads_per_worker": self.threads}

    def execute(self, request: RunRequest, tasks: Sequence[Task], *, ctx: Any) -> list[TaskFailure]:
        mpctx = mp.get_context("spawn")
        sched = _Scheduler(tasks, progress=bool(request.run_args.get("progress", True)))
        pool: list[_Worker] = []
        previous = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        try:
            pool = [_Worker(mpctx, request, self.threads, i) for i in range(
                min(self.workers, max(1, len(tasks))))]
            while True:
                for worker in pool:
                    if worker.task is None:
                        ready = sched.ready()
                        if ready:
                            sched.take(ready[0])
                            worker.send(ready[0])
                            _log(f"started {ready[0].key} on worker {worker.proc.pid}")
                busy = [w for w in pool if w.task is not None]
                if not busy:
                    if sched.pending:  # only tasks behind a failed prerequisite remain
                        sched.ready()
                        continue
                    break
                mp.connection.wait([w.conn for w in busy] + [w.proc.sentinel for w in busy],
                                   timeout=5.0)
                for i, worker in enumerate(pool):
                    if worker.task is None:
                        continue
                    if worker.conn.poll():
                        try:
                            status, key, payload = worker.conn.recv()
                        except EOFError:
                            status, key, payload = "died", worker.task.key, None
                    elif not worker.proc.is_alive():
                        status, key, payload = "died", worker.task.key, None
                    else:
                        continue
                    if status == "done":
                        sched.succeed(key, float(payload))
                        worker.task = None
                    elif status == "error":
                        sched.fail(key, str(payload))
                        worker.task = None
                    else:
                        worker.proc.join()
                        sched.fail(key, f"worker process died (exit code {worker.proc.exitcode})")
                        pool[i] = _Worker(mpctx, request, self.threads, i)
        except KeyboardInterrupt:
            _log("interrupted: stopping the workers; their last checkpoints stay for --resume")
            raise
        finally:
            for worker in pool:
                if worker.proc.is_alive() and worker.task is None:
                    try:
                        worker.conn.send(None)
                    except (BrokenPipeError, OSError):
                        pass
            for worker in pool:
                worker.stop(timeout=30.0 if worker.task is None else 10.0)
            signal.signal(signal.SIGTERM, previous)
        return sched.close()


def _remote_loop(sched: _Scheduler, submit: Callable[[list[Task]], Any],
                 wait_any: Callable[[list[Any]], tuple[Any, list[dict[str, Any]] | None, str | None]],
                 capacity: int, tasks_per_job: int = 1) -> list[TaskFailure]:
    """Submit ready tasks (in jobs of up to ``tasks_per_job``, at most ``capacity`` jobs in
    flight) and collect them as they finish."""
    flight: dict[Any, list[str]] = {}
    while sched.pending or flight:
        ready = sched.ready()
        while ready and len(flight) < capacity:
            chunk, ready = ready[:tasks_per_job], ready[tasks_per_job:]
            for task in chunk:
                sched.take(task)
            flight[submit(chunk)] = [t.key for t in chunk]
            _log(f"submitted {', '.join(t.key for t in chunk)}")
        if not flight:
            if sched.pending:
                sched.ready()
                continue
            break
        handle, outcomes, error = wait_any(list(flight))
        keys = flight.pop(handle)
        if error is not None or outcomes is None:
            for key in keys:
                sched.fail(key, error or "the job returned nothing")
            continue
        for outcome in outcomes:
            if "error" in outcome:
                sched.fail(outcome["key"], outcome["error"])
            else:
                sched.succeed(outcome["key"], float(outcome["seconds"]))
    return sched.close()


class RayLauncher:
    """Run the tasks as Ray remote functions (``ray.init(address=address)``)."""

    def __init__(self, address: str | None = None, cpus_per_task: int = 1, gpus_per_task: float = 0,
                 max_in_flight: int | None = None) -> None:
        self.address = address
        self.cpus_per_task = check_int("cpus_per_task", cpus_per_task, low=1)
        self.gpus_per_task = float(gpus_per_task)
        self.max_in_flight = max_in_flight

    def describe(self) -> dict[str, Any]:
        return {"launcher": "ray", "ray_address": self.address or "local",
                "cpus_per_task": self.cpus_per_task, "gpus_per_task": self.gpus_per_task}

    def execute(self, request: RunRequest, tasks: Sequence[Task], *, ctx: Any) -> list[TaskFailure]:
        ray = _require("ray")
        started_here = not ray.is_initialized()
        if started_here:
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False)
        try:
            remote = ray.remote(num_cpus=self.cpus_per_task, num_gpus=self.gpus_per_task,
                                max_retries=0)(execute_tasks)
            capacity = self.max_in_flight or max(1, int(ray.cluster_resources().get("CPU", 1)
                                                        // self.cpus_per_task))

            def submit(chunk: list[Task]) -> Any:
                return remote.remote(request, chunk, self.cpus_per_task)

            def wait_any(handles: list[Any]) -> tuple[Any, list[dict[str, Any]] | None, str | None]:
                (ready,), _ = ray.wait(handles, num_returns=1)
                try:
                    return ready, ray.get(ready), None
                except Exception as exc:  # noqa: BLE001 - RayTaskError wraps the task's error
                    return ready, None, str(exc)

            sched = _Scheduler(tasks, progress=bool(request.run_args.get("progress", True)))
            return _remote_loop(sched, submit, wait_any, capacity)
        finally:
            if started_here:
                ray.shutdown()


class SlurmLauncher:
    """Run the tasks as Slurm jobs through ``submitit`` (``local=True``: submitit's local executor).

    ``tasks_per_job`` > 1 packs several independent tasks into one job (one process start and one
    data load for all of them: worth it when the models are small).
    """

    def __init__(self, folder: Path, *, partition: str | None = None, time_minutes: int = 240,
                 gpus_per_task: int = 0, cpus_per_task: int = 1, local: bool = False,
                 max_in_flight: int = 64, tasks_per_job: int = 1) -> None:
        self.folder = Path(folder)
        self.partition = partition
        self.time_minutes = check_int("time_minutes", time_minutes, low=1)
        self.gpus_per_task = check_int("gpus_per_task", gpus_per_task, low=0)
        self.cpus_per_task = check_int("cpus_per_task", cpus_per_task, low=1)
        self.local = local
        self.max_in_flight = check_int("max_in_flight", max_in_flight, low=1)
        self.tasks_per_job = check_int("tasks_per_job", tasks_per_job, low=1)

    def describe(self) -> dict[str, Any]:
        return {"launcher": "slurm-local" if self.local else "slurm",
                "partition": self.partition, "gpus_per_task": self.gpus_per_task,
                "cpus_per_task": self.cpus_per_task}

    def _executor(self) -> Any:
        submitit = _require("submitit")
        if self.local:
            executor = submitit.LocalExecutor(folder=str(self.folder))
            executor.update_parameters(timeout_min=self.time_minutes)
            return executor
        executor = submitit.AutoExecutor(folder=str(self.folder))
        params: dict[str, Any] = {"timeout_min": self.time_minutes,
                                  "cpus_per_task": self.cpus_per_task,
                                  "gpus_per_node": self.gpus_per_task, "tasks_per_node": 1}
        if self.partition:
            params["slurm_partition"] = self.partition
        executor.update_parameters(**params)
        return executor

    def execute(self, request: RunRequest, tasks: Sequence[Task], *, ctx: Any) -> list[TaskFailure]:
        executor = self._executor()

        def submit(chunk: list[Task]) -> Any:
            return executor.submit(execute_tasks, request, chunk, self.cpus_per_task)

        def wait_any(jobs: list[Any]) -> tuple[Any, list[dict[str, Any]] | None, str | None]:
            while True:
                for job in jobs:
                    if job.done():
                        try:
                            return job, job.result(), None
                        except Exception as exc:  # noqa: BLE001 - the job's error, reported
                            return job, None, str(exc)
                time.sleep(0.5)

        sched = _Scheduler(tasks, progress=bool(request.run_args.get("progress", True)))
        return _remote_loop(sched, submit, wait_any, self.max_in_flight, self.tasks_per_job)


def _require(name: str) -> Any:
    try:
        return __import__(name)
    except ImportError as exc:
        raise UnknownNameError(
            f"the {name!r} launcher needs the optional package {name!r}: "
            "pip install 'ibcore[cluster]'"
        ) from exc


def make_launcher(name: str | None, *, workers: int = 1, ray_address: str | None = None,
                  slurm_folder: Path | None = None, partition: str | None = None,
                  time_minutes: int = 240, gpus_per_task: int = 0,
                  cpus_per_task: int = 1, tasks_per_job: int = 1) -> Any:
    """The launcher named on the command line (``None``/``local`` with ``workers``)."""
    if name in (None, "local"):
        workers = check_int("workers", workers, low=1)
        return InProcessLauncher() if workers == 1 else LocalPoolLauncher(workers)
    if name == "ray":
        return RayLauncher(ray_address, cpus_per_task=cpus_per_task, gpus_per_task=gpus_per_task)
    if name == "slurm":
        return SlurmLauncher(slurm_folder or Path("runs/slurm"), partition=partition,
                             time_minutes=time_minutes, gpus_per_task=gpus_per_task,
                             cpus_per_task=cpus_per_task, tasks_per_job=tasks_per_job)
    raise UnknownNameError(f"unknown launcher {name!r}; choose one of {', '.join(LAUNCHERS)}")
