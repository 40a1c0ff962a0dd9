"""accumulate_cka under tf.distribute.MirroredStrategy (two logical CPUs from conftest) equals one device."""

import numpy as np
import pytest
import tensorflow as tf

from vitcnn_tf import representations
from vitcnn_tf.metrics import reference
from vitcnn_tf.models import ViT, ViTConfig

LAYERS = r"embedding|block\d+/(\+sa|mlp_hidden|\+mlp)"


@pytest.fixture(scope="module")
def setup():
    model = ViT(ViTConfig.from_name("ViT-CPU/4", num_layers=2, hidden_size=32, mlp_dim=64))
    images = np.random.default_rng(0).uniform(-1, 1, (64, 32, 32, 3)).astype("float32")
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    return model, images, strategy


def _dataset(images, batch_size):
    labels = np.zeros(len(images), "int64")
    return tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch_size)


def test_mirrored_run_equals_single_device_run_with_per_replica_batches(setup):
    model, images, strategy = setup
    distributed, names, _, terms = representations.accumulate_cka(
        model, _dataset(images, 16), LAYERS, strategy=strategy, progress=False, return_batch_terms=True)
    single, _, _ = representations.accumulate_cka(model, _dataset(images, 8), LAYERS, progress=False)
    assert float(distributed.num_batches.numpy()) == 8.0  # 4 global batches x 2 replicas
    np.testing.assert_allclose(distributed.result().numpy(), single.result().numpy(), atol=1e-6)
    # independent check: the float64 reference on the same 8-example minibatches
    batches = [list(representations.extract(model, images[i:i + 8], names).values()) for i in range(0, 64, 8)]
    np.testing.assert_allclose(distributed.result().numpy(), reference.minibatch_cka(batches), atol=1e-6)
    # per-global-batch terms add up to the state
    assert terms["cross"].shape == (4, len(names), len(names))
    np.testing.assert_allclose(terms["cross"].sum(axis=0), distributed.cross_hsic.numpy(), rtol=1e-12)


def test_mirrored_cross_model_run_equals_single_device(setup):
    model, images, strategy = setup
    other = ViT(ViTConfig.from_name("ViT-CPU/4", num_layers=1, hidden_size=32, mlp_dim=64, classifier="gap"))
    kwargs = dict(layers_x=LAYERS, model_y=other, layers_y=r"block00/\+mlp|encoder_norm", progress=False)
    distributed, _, _ = representations.accumulate_cka(model, _dataset(images, 16), strategy=strategy, **kwargs)
    single, _, _ = representations.accumulate_cka(model, _dataset(images, 8), **kwargs)
    np.testing.assert_allclose(distributed.result().numpy(), single.result().numpy(), atol=1e-6)


def test_strategy_rejects_images_of_the_wrong_shape(setup):
    model, _, strategy = setup
    wrong = tf.data.Dataset.from_tensor_slices(np.zeros((8, 16, 16, 3), "float32")).batch(4)
    with pytest.raises(ValueError, match=r"dataset images have shape \[n, 16, 16, 3\].*expects \[n, 32, 32, 3\]"):
        representations.accumulate_cka(model, wrong, LAYERS, strategy=strategy, progress=False)
