"""vitcnn_tf.parallel: dependency order, cost order, failures, and the spawned single-threaded workers."""

import os

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
def test_two_spawned_single_threaded_workers():
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
