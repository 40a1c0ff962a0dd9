"""Independent jobs (zoo trainings, experiment stages) run in single-threaded worker processes.

On a small CPU machine, ``k`` processes of one thread each do more work than one process with ``k`` threads: the
models of this project are small, and most of their ops cannot keep several cores busy.
:func:`run_tasks` runs a graph of :class:`Task` s that way::

    tasks = [Task("vit", train, ("vit",), cost=5), Task("resnet", train, ("resnet",), cost=3),
             Task("sec4", run_stage, ("sec4",), after=("vit", "resnet"))]
    results = run_tasks(tasks, num_workers=2)     # {"vit": ..., "resnet": ..., "sec4": ...}

A task starts once every task it names in ``after`` has finished; among the tasks ready to start, the costliest
goes first (longest-processing-time scheduling). Every task runs in a fresh spawned process (never forked:
TensorFlow's runtime does not survive a fork) whose TensorFlow and BLAS thread pools are limited by
:func:`vitcnn_tf.runtime.limit_threads`, so nothing a task leaves behind (Keras name counters, graphs, tf.data
threads) reaches the next one; a fresh process costs about 5 s of start-up. With
``num_workers=1`` the tasks run in this process, one after the other, without thread limits. Task functions and
their arguments must be picklable (module-level functions, plain data) and their results too.

A worker process dies with the process that started it, even when that one is killed with ``kill -9``
(:func:`vitcnn_tf.runtime.die_with_parent`), so an interrupted run leaves no worker behind still writing results;
it imports TensorFlow without its C++ start-up log lines (:func:`vitcnn_tf.runtime.import_tensorflow`).
"""

import concurrent.futures
import dataclasses
import multiprocessing
import os
import traceback
from typing import Callable

from vitcnn_tf import runtime


@dataclasses.dataclass(frozen=True)
class Task:
    """``function(*args, **kwargs)``, run after the tasks named in ``after``; ``cost`` orders ready tasks."""

    name: str
    function: Callable
    args: tuple = ()
    kwargs: dict = dataclasses.field(default_factory=dict)
    after: tuple = ()
    cost: float = 1.0


class TasksFailed(RuntimeError):
    """Raised by :func:`run_tasks` when tasks failed: ``failures`` maps their names to the error text
    (a traceback, or the failed task a dependent waited for); ``results`` holds the tasks that finished."""

    def __init__(self, failures, results):
        self.failures = failures
        self.results = results
        lines = "\n".join(f"  {name}: {text.strip().splitlines()[-1]}" for name, text in failures.items())
        super().__init__(f"{len(failures)} task(s) failed:\n{lines}")


def default_num_workers():
    """The number of CPUs this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def run_tasks(tasks, *, num_workers=None, threads_per_worker=1, on_start=None, on_done=None, on_tick=None,
              tick_seconds=1.0):
    """Runs ``tasks`` (a sequence of :class:`Task`) and returns ``{task name: result}``.

    Args:
      num_workers: worker processes (default :func:`default_num_workers`, at most the number of tasks); 1 runs the
        tasks in this process.
      threads_per_worker: TensorFlow / BLAS threads of each worker process.
      on_start / on_done: called in this process as ``on_start(task)`` when a task starts and
        ``on_done(task, result)`` when it finishes, e.g. to print progress.
      on_tick: with worker processes, called in this process as ``on_tick()`` about every ``tick_seconds`` while
        tasks run (e.g. to redraw a progress line).

    Raises:
      ValueError: duplicate names, an ``after`` naming no task, a dependency cycle, or a bad worker count.
      TasksFailed: after every other runnable task has finished, if some task raised (its dependents do not run).
    """
    tasks = _check_tasks(tasks)
    if num_workers is None:
        num_workers = default_num_workers()
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 1:
        raise ValueError(f"run_tasks: num_workers must be a positive int, got {num_workers!r}")
    num_workers = min(num_workers, max(len(tasks), 1))
    scheduler = _Scheduler(tasks)
    if num_workers == 1:
        while (task := scheduler.next_ready()) is not None:
            if on_start:
                on_start(task)
            try:
                result = task.function(*task.args, **task.kwargs)
            except Exception:  # noqa: BLE001 (reported with its traceback in TasksFailed)
                scheduler.fail(task.name, traceback.format_exc())
                continue
            scheduler.finish(task.name, result)
            if on_done:
                on_done(task, result)
        return scheduler.outcome()

    runtime.set_environment_defaults()  # inherited by the workers
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(num_workers, mp_context=context, initializer=_start_worker,
                                                initargs=(threads_per_worker, os.getpid()),
                                                max_tasks_per_child=1) as pool:
        running = {}
        while True:
            while len(running) < num_workers and (task := scheduler.next_ready()) is not None:
                if on_start:
                    on_start(task)
                running[pool.submit(_run_in_worker, task.function, task.args, task.kwargs)] = task
            if not running:
                return scheduler.outcome()
            done, _ = concurrent.futures.wait(running, timeout=tick_seconds if on_tick else None,
                                              return_when=concurrent.futures.FIRST_COMPLETED)
            if on_tick:
                on_tick()
            for future in done:
                task = running.pop(future)
                try:
                    result = future.result()
                except Exception as error:  # noqa: BLE001 (a worker that died, or an unpicklable result)
                    scheduler.fail(task.name, "".join(traceback.format_exception(error)))
                    continue
                if isinstance(result, _WorkerError):
                    scheduler.fail(task.name, result.traceback)
                    continue
                scheduler.finish(task.name, result)
                if on_done:
                    on_done(task, result)


class _Scheduler:
    """Which tasks are ready, finished or failed."""

    def __init__(self, tasks):
        self.pending = {task.name: task for task in tasks}
        self.results = {}
        self.failures = {}

    def next_ready(self):
        """The costliest pending task whose dependencies all finished (None if there is none); tasks whose
        dependencies failed are failed in turn."""
        for name, task in list(self.pending.items()):
            failed = [dependency for dependency in task.after if dependency in self.failures]
            if failed:
                del self.pending[name]
                self.failures[name] = f"not run: it needs {', '.join(failed)}, which failed"
        ready = [task for task in self.pending.values() if all(d in self.results for d in task.after)]
        if not ready:
            return None
        task = max(ready, key=lambda candidate: candidate.cost)  # first of equal costs, in the given order
        del self.pending[task.name]
        return task

    def finish(self, name, result):
        self.results[name] = result

    def fail(self, name, text):
        self.failures[name] = text

    def outcome(self):
        if self.failures:
            raise TasksFailed(self.failures, self.results)
        return self.results


def _check_tasks(tasks):
    tasks = list(tasks)
    for task in tasks:
        if not isinstance(task, Task):
            raise ValueError(f"run_tasks: tasks must be Task objects, got {type(task).__name__}")
    names = [task.name for task in tasks]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"run_tasks: duplicate task names {duplicates}")
    for task in tasks:
        unknown = [name for name in task.after if name not in names]
        if unknown:
            raise ValueError(f"run_tasks: task {task.name!r} runs after {unknown}, which name no task")
    done, remaining = set(), {task.name: task for task in tasks}
    while remaining:
        ready = [name for name, task in remaining.items() if set(task.after) <= done]
        if not ready:
            raise ValueError(f"run_tasks: dependency cycle among {sorted(remaining)}")
        done.update(ready)
        for name in ready:
            del remaining[name]
    return tasks


@dataclasses.dataclass(frozen=True)
class _WorkerError:
    traceback: str


def _start_worker(threads, parent_pid):
    runtime.die_with_parent(parent_pid)
    runtime.import_tensorflow()
    runtime.limit_threads(threads)


def _run_in_worker(function, args, kwargs):
    """Runs one task in a worker process; an exception comes back as its traceback text."""
    try:
        return function(*args, **kwargs)
    except Exception:  # noqa: BLE001 (sent back to the parent with the worker-side traceback)
        return _WorkerError(traceback.format_exc())
