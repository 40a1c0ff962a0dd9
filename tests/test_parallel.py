"""vitcnn_tf.parallel: dependency order, cost order, failures, and the single-threaded workers forked from the
worker server."""

import os
import subprocess
import sys

import pytest

import parallel_tasks
from vitcnn_tf import parallel
from vitcnn_tf.parallel import Task


def _record_order(tasks, **kwargs):
    started = []
    results = parallel.run_tasks(tasks, on_start=lambda task: started.append(task.name), **kwargs)
    return started, results


def test_in_process_runs_dependencies_first_and_costliest_ready_task_first():
    tasks = [Task("small", parallel_tasks.square, (2,), cost=1), Task("big", parallel_tasks.square, (3,), cost=5),
             Task("after_small", parallel_tasks.square, (4,), after=("small",), cost=100),
             Task("after_both", parallel_tasks.square, (5,), after=("after_small", "big"))]
    started, results = _record_order(tasks, num_workers=1)
    assert started == ["big", "small", "after_small", "after_both"]
    assert results == {"big": 9, "small": 4, "after_small": 16, "after_both": 25}


def test_failure_skips_dependents_and_reports_the_rest():
    tasks = [Task("bad", parallel_tasks.fail, ("boom",)),
             Task("needs_bad", parallel_tasks.square, (2,), after=("bad",)), Task("fine", parallel_tasks.square, (3,))]
    with pytest.raises(parallel.TasksFailed, match="boom") as caught:
        parallel.run_tasks(tasks, num_workers=1)
    assert caught.value.results == {"fine": 9}
    assert "RuntimeError: boom" in caught.value.failures["bad"]
    assert caught.value.failures["needs_bad"] == "not run: it needs bad, which failed"


@pytest.mark.parametrize("tasks, message", [
    ([Task("a", parallel_tasks.square, (1,)), Task("a", parallel_tasks.square, (2,))], "duplicate task names"),
    ([Task("a", parallel_tasks.square, (1,), after=("b",))], "name no task"),
    ([Task("a", parallel_tasks.square, (1,), after=("b",)), Task("b", parallel_tasks.square, (1,), after=("a",))],
     "dependency cycle"),
    (["not a task"], "Task objects"),
])
def test_bad_task_graphs_raise(tasks, message):
    with pytest.raises(ValueError, match=message):
        parallel.run_tasks(tasks, num_workers=1)


def test_bad_worker_count_raises():
    with pytest.raises(ValueError, match="num_workers"):
        parallel.run_tasks([Task("a", parallel_tasks.square, (1,))], num_workers=0)


@pytest.mark.slow
def test_two_single_threaded_workers():
    tasks = [Task(f"probe{i}", parallel_tasks.process_id_and_threads) for i in range(4)]
    tasks += [Task("bad", parallel_tasks.fail, ("worker boom",)), Task("squared", parallel_tasks.square, (7,))]
    with pytest.raises(parallel.TasksFailed) as caught:
        parallel.run_tasks(tasks, num_workers=2)
    results = caught.value.results
    assert "RuntimeError: worker boom" in caught.value.failures["bad"]  # the worker-side traceback
    assert results["squared"] == 49
    probes = [results[f"probe{i}"] for i in range(4)]
    process_ids = {pid for pid, _ in probes}
    assert os.getpid() not in process_ids and len(process_ids) == 4  # a fresh process for every task
    assert all(threads == 1 for _, threads in probes)


@pytest.mark.slow
def test_workers_are_forked_from_the_server_that_imported_the_preloaded_modules():
    """In a fresh process (this one's server may be running already, with other modules): the server imports
    ``parallel_tasks``; the workers are its children and find the module imported, by the server."""
    script = ("from vitcnn_tf import parallel\n"
              "import parallel_tasks\n"
              "parallel.start_worker_server(preload=('parallel_tasks',))\n"
              "tasks = [parallel.Task(f't{i}', parallel_tasks.where_imported) for i in range(3)]\n"
              "print(list(parallel.run_tasks(tasks, num_workers=2).values()))\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=os.path.dirname(__file__), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    places = eval(done.stdout.strip().splitlines()[-1])  # [(imported in, worker pid, worker's parent)]
    servers = {imported_in for imported_in, _, _ in places}
    assert len(servers) == 1 and all(parent == imported_in != pid for imported_in, pid, parent in places)
    assert len({pid for _, pid, _ in places}) == 3


@pytest.mark.slow
def test_a_task_sees_the_environment_of_the_pool_process_when_it_starts(monkeypatch):
    parallel.start_worker_server()  # the server's environment is this process's before the change
    monkeypatch.setenv("VITCNN_TF_TEST_SETTING", "set after the server started")
    tasks = [Task(f"t{i}", parallel_tasks.environment_variable, ("VITCNN_TF_TEST_SETTING",), isolated=i == 0)
             for i in range(3)]
    assert set(parallel.run_tasks(tasks, num_workers=2).values()) == {"set after the server started"}


@pytest.mark.slow
def test_non_isolated_tasks_share_the_workers_and_isolated_ones_get_a_fresh_process():
    tasks = [Task(f"shared{i}", parallel_tasks.process_id_and_threads, isolated=False, cost=10 - i) for i in range(4)]
    tasks += [Task("isolated", parallel_tasks.process_id_and_threads, cost=0)]
    results = parallel.run_tasks(tasks, num_workers=2)
    shared = {results[f"shared{i}"][0] for i in range(4)}
    assert len(shared) == 2 and os.getpid() not in shared
    assert results["isolated"][0] not in shared
    assert all(threads == 1 for _, threads in results.values())


@pytest.mark.slow
def test_a_killed_worker_fails_only_its_task_and_a_fresh_worker_takes_its_place():
    tasks = [Task("killed", parallel_tasks.die, isolated=False, cost=3),
             Task("beside", parallel_tasks.sleep_then_process_id, (4.0,), isolated=False, cost=2),
             Task("after", parallel_tasks.square, (6,), after=("beside",), isolated=False),
             Task("also_after", parallel_tasks.square, (5,), after=("killed",), isolated=False),
             Task("unpicklable", parallel_tasks.unpicklable_result, isolated=False, cost=0)]
    with pytest.raises(parallel.TasksFailed) as caught:
        parallel.run_tasks(tasks, num_workers=2)
    failures = caught.value.failures
    assert set(failures) == {"killed", "also_after", "unpicklable"}
    assert "WorkerDied" in failures["killed"] and "exit code -9" in failures["killed"]
    assert "pickle" in failures["unpicklable"].lower()
    assert caught.value.results["after"] == 36 and "beside" in caught.value.results
