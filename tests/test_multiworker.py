"""``--strategy multiworker``: two worker processes on localhost accumulate the same CKA as one process.

The test spawns two copies of this file (``python tests/test_multiworker.py WORKDIR INDEX``), each with a
``TF_CONFIG`` naming both workers on free 127.0.0.1 ports. Each gets its strategy the way the experiments do
(``experiments.common.distribution_strategy`` for ``--strategy multiworker``), loads the tiny ViT the test wrote,
runs ``representations.accumulate_cka`` over small deterministic datasets (one whose global batches are all full,
ones whose last global batch is short) and saves its results. They must equal a single-process run over the
minibatches the two replicas take (each global batch cut into two equal consecutive shares), and the float64
NumPy reference on them.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYERS = r"embedding|block\d+/(\+sa|mlp_hidden|\+mlp)|encoder_norm"
CROSS_LAYERS_Y = r"block00/\+mlp|encoder_norm"
# case -> (examples, global batch size, cross-model). Two replicas: shares of 8; 41 = 16 + 16 + 9 leaves one
# example of the last batch out (shares of 4); 38 = 16 + 16 + 6 leaves its whole last batch out (shares of 3).
CASES = {"even": (48, 16, False), "short_last": (41, 16, False), "tiny_last": (38, 16, False),
         "short_last_cross": (41, 16, True)}
NUM_WORKERS = 2
WORKER_TIMEOUT_S = 150


def tiny_vit():
    """A 1-block ViT on 16x16 images (weights set by the caller)."""
    from vitcnn_tf.models import ViT, ViTConfig

    return ViT(ViTConfig.from_name("ViT-CPU/4", image_size=16, num_layers=1, hidden_size=16, num_heads=2,
                                   mlp_dim=32))


def case_images(name):
    """The deterministic images ``[n, 16, 16, 3]`` of a case."""
    count = CASES[name][0]
    return np.random.default_rng(len(name) * 1000 + count).uniform(-1, 1, (count, 16, 16, 3)).astype("float32")


def replica_shares(images, global_batch):
    """The minibatches two replicas take from ``images`` batched by ``global_batch``: each batch cut into two
    consecutive halves of ``len(batch) // 2`` examples, batches whose halves would be under 4 examples left out."""
    shares = []
    for start in range(0, len(images), global_batch):
        batch = images[start:start + global_batch]
        half = len(batch) // NUM_WORKERS
        if half >= 4:
            shares += [batch[:half], batch[half:2 * half]]
    return shares


def run_worker(workdir, index):
    """Body of one worker process: its results go to ``workdir/worker<index>.npz``."""
    import argparse
    import warnings

    from vitcnn_tf import runtime

    runtime.set_environment_defaults()
    from experiments import common

    # The strategy first: it configures the collective runtime before any TensorFlow op runs.
    strategy = common.distribution_strategy(argparse.Namespace(strategy="multiworker"))
    import tensorflow as tf

    from vitcnn_tf import representations

    model = tiny_vit()
    model.load_weights(os.path.join(workdir, "model.weights.h5"))
    results = {"num_replicas": strategy.num_replicas_in_sync}
    for name, (_, batch_size, cross) in CASES.items():
        images = case_images(name)
        labels = np.arange(len(images))
        dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch_size)
        kwargs = dict(layers_y=CROSS_LAYERS_Y) if cross else {}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            metric, _, _, terms = representations.accumulate_cka(model, dataset, LAYERS, strategy=strategy,
                                                                 progress=False, return_batch_terms=True, **kwargs)
            results[f"{name}/cka"] = metric.result().numpy()
        results[f"{name}/num_batches"] = float(metric.num_batches.numpy())
        results[f"{name}/cross_terms"] = terms["cross"]
        results[f"{name}/warnings"] = np.array([str(w.message) for w in caught if "left out" in str(w.message)])
    np.savez(os.path.join(workdir, f"worker{index}.npz"), **results)


def free_ports(count):
    """``count`` distinct TCP ports free on 127.0.0.1 now."""
    sockets = []
    try:
        for _ in range(count):
            handle = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            handle.bind(("127.0.0.1", 0))
            sockets.append(handle)
        return [handle.getsockname()[1] for handle in sockets]
    finally:
        for handle in sockets:
            handle.close()


def run_workers(workdir):
    """Runs the two worker processes to completion (killing both on a failure or timeout); returns their results."""
    ports = free_ports(NUM_WORKERS)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    processes = []
    try:
        for index in range(NUM_WORKERS):
            task = {"type": "worker", "index": index}
            env = dict(os.environ, TF_CONFIG=json.dumps({"cluster": cluster, "task": task}),
                       PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])),
                       CUDA_VISIBLE_DEVICES="-1")
            log = open(os.path.join(workdir, f"worker{index}.log"), "w")
            processes.append(subprocess.Popen([sys.executable, os.path.abspath(__file__), str(workdir), str(index)],
                                              cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
            log.close()
        for process in processes:
            process.wait(timeout=WORKER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pass
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    logs = {index: open(os.path.join(workdir, f"worker{index}.log")).read()[-3000:] for index in range(NUM_WORKERS)}
    for index, process in enumerate(processes):
        assert process.returncode == 0, f"worker {index} exited with {process.returncode}:\n{logs[index]}"
    return [dict(np.load(os.path.join(workdir, f"worker{index}.npz"))) for index in range(NUM_WORKERS)]


def test_two_local_workers_equal_one_process(tmp_path):
    from vitcnn_tf import representations
    from vitcnn_tf.metrics import reference

    model = tiny_vit()
    model.save_weights(str(tmp_path / "model.weights.h5"))
    workers = run_workers(tmp_path)

    for result in workers:
        assert int(result["num_replicas"]) == NUM_WORKERS
    for name, (count, batch_size, cross) in CASES.items():
        images = case_images(name)
        shares = replica_shares(images, batch_size)
        kwargs = dict(layers_y=CROSS_LAYERS_Y) if cross else {}
        single, names_x, names_y = representations.accumulate_cka(model, shares, LAYERS, progress=False, **kwargs)
        # independent check: the float64 reference on the same minibatches
        taps = [representations.extract(model, share, list(dict.fromkeys(names_x + names_y))) for share in shares]
        expected = reference.minibatch_cka([[t[n] for n in names_x] for t in taps],
                                           [[t[n] for n in names_y] for t in taps] if cross else None)
        np.testing.assert_allclose(single.result().numpy(), expected, atol=1e-6, err_msg=name)
        used = sum(len(share) for share in shares)
        for index, result in enumerate(workers):
            np.testing.assert_allclose(result[f"{name}/cka"], single.result().numpy(), atol=1e-6,
                                       err_msg=f"{name}, worker {index}")
            assert result[f"{name}/num_batches"] == len(shares)
            # per-global-batch terms add up to the summed state of both replicas
            np.testing.assert_allclose(result[f"{name}/cross_terms"].sum(axis=0), single.cross_hsic.numpy(),
                                       rtol=1e-5, atol=1e-9)
            messages = list(result[f"{name}/warnings"])
            if used == count:
                assert messages == [], name
            else:
                assert len(messages) == 1 and f"left out {count - used} of {count} examples" in messages[0], messages


if __name__ == "__main__":
    run_worker(sys.argv[1], int(sys.argv[2]))
    sys.stdout.flush()
    # A multi-worker strategy's servers can keep the interpreter from exiting; the results are written.
    os._exit(0)
