"""Independent jobs (zoo trainings, experiment stages) run in single-threaded worker processes.

On a small CPU machine, ``k`` processes of one thread each do more work than one process with ``k`` threads: the
models of this project are small, and most of their ops cannot keep several cores busy.
:func:`run_tasks` runs a graph of :class:`Task` s that way::

    tasks = [Task("vit", train, ("vit",), cost=5), Task("resnet", train, ("resnet",), cost=3),
             Task("sec4", run_stage, ("sec4",), after=("vit", "resnet"), isolated=False)]
    results = run_tasks(tasks, num_workers=2)     # {"vit": ..., "resnet": ..., "sec4": ...}

A task starts once every task it names in ``after`` has finished; among the tasks ready to start, the costliest
goes first (longest-processing-time scheduling). Tasks run in worker processes whose TensorFlow and BLAS thread
pools are limited by :func:`vitcnn_tf.runtime.limit_threads`. On Linux and macOS the workers are forked from a
server process (:func:`start_worker_server`) that has imported TensorFlow but never ran an op, so a worker starts
in milliseconds instead of importing TensorFlow 2.21 itself (about 8 s on a 2-core Intel Xeon); elsewhere they are
spawned. A process that has run TensorFlow ops is never forked (its runtime does not survive a fork). An
``isolated`` task (the default) gets a fresh process that ends with it, so nothing a task leaves behind (Keras name
counters, graphs, tf.data threads) reaches another one. A task with ``isolated=False`` may run in a worker that ran
other such tasks before it (Keras' global state is cleared in between), which suits tasks whose results do not
depend on what ran before them (the analysis stages: each seeds its own random state). A worker process that dies
(killed, out of memory) fails only the task it was running; the other workers go on, and a fresh process takes its
place. With ``num_workers=1`` the tasks run in this process, one after the other, without thread limits. Task
functions and their arguments must be picklable (module-level functions, plain data) and their results too.

A worker process dies with the process that started it, even when that one is killed with ``kill -9``
(:func:`vitcnn_tf.runtime.die_with_creator`), so an interrupted run leaves no worker behind still writing results;
the server then ends too. A task sees the environment variables of the pool's process as they were when it
started. TensorFlow is imported without its C++ start-up log lines
(:func:`vitcnn_tf.runtime.import_tensorflow`).
"""

import dataclasses
import multiprocessing
import multiprocessing.connection
from multiprocessing import forkserver, reduction
import os
import traceback
from typing import Callable

from vitcnn_tf import runtime


@dataclasses.dataclass(frozen=True)
class Task:
    """``function(*args, **kwargs)``, run after the tasks named in ``after``; ``cost`` orders ready tasks;
    ``isolated``: in a process of its own (False: possibly in a worker that ran other non-isolated tasks)."""

    name: str
    function: Callable
    args: tuple = ()
    kwargs: dict = dataclasses.field(default_factory=dict)
    after: tuple = ()
    cost: float = 1.0
    isolated: bool = True


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


def start_worker_server(preload=()):
    """Starts the server process that forks this process's workers, if it is not running yet, and returns the
    ``multiprocessing`` context the workers come from.

    The server imports TensorFlow (:mod:`vitcnn_tf.worker_preload`) and then the modules named in ``preload``, once;
    every worker forked from it starts with them loaded instead of importing them itself. The server never runs a
    TensorFlow op, so the forked workers start from a clean runtime. :func:`run_tasks` starts the server when it
    needs workers; a command that calls this first, before it imports TensorFlow itself, has both imports run at
    once. A server already running keeps the modules it has. Where ``fork`` is not available (not on Linux or
    macOS), the workers are spawned and import what they need themselves.
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    runtime.set_environment_defaults()  # the server's environment, inherited by the workers
    context.set_forkserver_preload(["vitcnn_tf.worker_preload", *preload])
    forkserver.ensure_running()
    return context


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
    with _WorkerPool(num_workers, threads_per_worker) as pool:
        while True:
            while pool.has_room() and (task := scheduler.next_ready()) is not None:
                if on_start:
                    on_start(task)
                try:
                    pool.start(task)
                except Exception as error:  # noqa: BLE001 (e.g. arguments that cannot be pickled)
                    scheduler.fail(task.name, "".join(traceback.format_exception(error)))
            if not pool.busy():
                return scheduler.outcome()
            finished = pool.wait(timeout=tick_seconds if on_tick else None)
            if on_tick:
                on_tick()
            for task, result in finished:
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


class _Worker:
    """One worker process and the pipe to it; ``task`` is the task it runs (None when idle)."""

    def __init__(self, context, threads):
        self.connection, child_end = context.Pipe()
        self.process = context.Process(target=_worker_loop, args=(child_end, threads), name="vitcnn_tf-worker")
        self.process.start()
        child_end.close()
        self.task = None

    def stop(self, grace_seconds=5.0):
        """Asks an idle worker to end (kills a busy or unresponsive one) and waits for it."""
        if self.task is None and self.process.is_alive():
            try:
                self.connection.send(None)
            except (OSError, ValueError):
                pass
            self.process.join(grace_seconds)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.connection.close()


class _WorkerPool:
    """At most ``size`` worker processes, each running one task at a time (see the module docstring)."""

    def __init__(self, size, threads):
        self.size = size
        self.threads = threads
        self.context = start_worker_server()
        self.workers = []

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        for worker in self.workers:
            worker.stop()
        self.workers = []

    def busy(self):
        return [worker for worker in self.workers if worker.task is not None]

    def has_room(self):
        return len(self.busy()) < self.size

    def start(self, task):
        """Runs ``task`` in an idle worker (a non-isolated task) or in a fresh one; raises what pickling the task
        raised (e.g. arguments that cannot be pickled, no worker touched) or OSError (the worker had died)."""
        message = reduction.ForkingPickler.dumps((task.function, task.args, task.kwargs, not task.isolated,
                                                  dict(os.environ)))
        for worker in [worker for worker in self.workers if worker.task is None and not worker.process.is_alive()]:
            self._remove(worker)
        idle = [worker for worker in self.workers if worker.task is None]  # only ever ran non-isolated tasks
        if task.isolated or not idle:
            if len(self.workers) >= self.size:  # makes room: ends an idle worker
                self._remove(idle[0])
            worker = _Worker(self.context, self.threads)
            self.workers.append(worker)
        else:
            worker = idle[0]
        worker.task = task
        try:
            worker.connection.send_bytes(message)
        except OSError:
            worker.task = None
            self._remove(worker)
            raise

    def wait(self, timeout=None):
        """Waits up to ``timeout`` seconds (None: until a task ends) and returns ``[(task, result)]`` of the tasks
        that ended: a worker's result or :class:`_WorkerError` (also for a worker that died)."""
        busy = self.busy()
        multiprocessing.connection.wait([worker.connection for worker in busy] +
                                        [worker.process.sentinel for worker in busy], timeout)
        finished = []
        for worker in busy:
            task = worker.task
            try:
                if not worker.connection.poll():
                    if worker.process.is_alive():
                        continue
                    raise EOFError
                result = worker.connection.recv()
            except (EOFError, OSError):
                worker.process.join()
                result = _WorkerError(f"WorkerDied: the worker process running task {task.name!r} ended with exit "
                                      f"code {worker.process.exitcode} before returning a result\n")
                worker.task = None
                self._remove(worker)
            else:
                worker.task = None
                if task.isolated:
                    self._remove(worker)
            finished.append((task, result))
        return finished

    def _remove(self, worker):
        worker.stop()
        self.workers.remove(worker)


def _worker_loop(connection, threads):
    """A worker process: runs ``(function, args, kwargs, tidy_up, environment)`` messages until it receives None or
    its parent's pipe closes; sends back each result, or an exception as :class:`_WorkerError` with its traceback.
    Each task runs with ``environment``, the pool process's environment variables when the task started (a forked
    worker would otherwise have the server's, from when the server started). ``tidy_up``: afterwards clear Keras'
    global state (name counters, graphs) for the next task. The worker dies with the pool's process."""
    runtime.die_with_creator()
    runtime.import_tensorflow()
    runtime.limit_threads(threads)
    while True:
        try:
            message = connection.recv()
        except EOFError:
            return
        if message is None:
            return
        function, args, kwargs, tidy_up, environment = message
        if environment != os.environ:
            os.environ.clear()
            os.environ.update(environment)
        try:
            result = function(*args, **kwargs)
        except Exception:  # noqa: BLE001 (sent back to the parent with the worker-side traceback)
            result = _WorkerError(traceback.format_exc())
        finally:
            if tidy_up:
                import keras

                keras.utils.clear_session(free_memory=True)
        try:
            connection.send(result)
        except Exception:  # noqa: BLE001 (a result that cannot be pickled)
            connection.send(_WorkerError(traceback.format_exc()))
