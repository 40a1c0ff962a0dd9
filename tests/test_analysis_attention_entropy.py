"""Attention entropy: explicit loops, closed forms (one-hot and uniform heads), streaming equals one call, errors."""

import math

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given
from hypothesis import strategies as st

from vitcnn_tf.analysis import attention


def loop_entropy(maps, num_prefix_tokens):
    """Explicit loops over heads, examples, queries and keys, in nats."""
    n, heads, num_tokens, _ = maps.shape
    result = np.zeros(heads)
    for head in range(heads):
        total = 0.0
        for example in range(n):
            for query in range(num_prefix_tokens, num_tokens):
                weights = maps[example, head, query, num_prefix_tokens:]
                weights = weights / weights.sum()
                total += -sum(w * math.log(w) for w in weights if w > 0)
        result[head] = total / (n * (num_tokens - num_prefix_tokens))
    return result


def random_maps(seed, n, heads, tokens, zeros=False):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((n, heads, tokens, tokens)) * 3
    maps = np.exp(logits) / np.exp(logits).sum(axis=-1, keepdims=True)
    if zeros:
        maps = np.where(rng.uniform(size=maps.shape) < 0.3, 0.0, maps)
        maps[..., -1] += 1e-3  # every row keeps some patch mass
    return maps


@given(st.integers(0, 2**32 - 1), st.integers(1, 3), st.integers(1, 3), st.integers(0, 2), st.booleans())
def test_entropy_equals_loops(seed, n, heads, prefix, zeros):
    maps = random_maps(seed, n, heads, prefix + 5, zeros)
    np.testing.assert_allclose(attention.attention_entropy(maps, prefix), loop_entropy(maps, prefix), rtol=1e-12)


def test_closed_forms_one_hot_uniform_and_cls_mass_ignored():
    num_patches = 9
    one_hot = np.zeros((2, 1, 1 + num_patches, 1 + num_patches))
    one_hot[..., 0] = 0.5  # half on the CLS key: renormalised away
    one_hot[:, :, np.arange(1, 10), np.arange(1, 10)] = 0.5
    uniform = np.full((2, 1, 1 + num_patches, 1 + num_patches), 1.0 / (1 + num_patches))
    result = attention.attention_entropy(np.concatenate([one_hot, uniform], axis=1), num_prefix_tokens=1)
    np.testing.assert_allclose(result, [0.0, math.log(num_patches)], atol=1e-12)
    # two keys with weights p and 1 - p: the binary entropy
    p = 0.2
    two = np.array([[[[p, 1 - p], [1 - p, p]]]])
    assert attention.attention_entropy(two, num_prefix_tokens=0)[0] == pytest.approx(
        -(p * math.log(p) + (1 - p) * math.log(1 - p)))


def test_streaming_equals_one_call_and_accepts_tensors():
    maps = random_maps(0, 70, 3, 17)  # more than one chunk of 32 examples
    accumulator = attention.AttentionEntropy(num_prefix_tokens=1)
    for start in range(0, 70, 25):
        accumulator.update(tf.constant(maps[start:start + 25], tf.float32))
    np.testing.assert_allclose(accumulator.result(), attention.attention_entropy(maps.astype(np.float32)),
                               rtol=1e-9)
    assert accumulator.per_example().shape == (70, 3)
    np.testing.assert_allclose(accumulator.per_example()[5], attention.attention_entropy(maps[5:6]), rtol=1e-6)


def test_errors_name_the_problem():
    maps = random_maps(0, 2, 2, 5)
    with pytest.raises(ValueError, match=r"attention: expected non-empty square attention maps \[n, heads, T, T\]"):
        attention.attention_entropy(maps[..., :4])
    with pytest.raises(ValueError, match="negative weights"):
        attention.attention_entropy(-maps)
    with pytest.raises(ValueError, match="num_prefix_tokens=5 must be in"):
        attention.attention_entropy(maps, num_prefix_tokens=5)
    zero = maps.copy()
    zero[0, 0, 2, 1:] = 0
    with pytest.raises(ValueError, match=r"1 query row\(s\) put no weight on any patch key"):
        attention.attention_entropy(zero)
    with pytest.raises(ValueError, match="AttentionEntropy: no attention maps added yet"):
        attention.AttentionEntropy().result()
    accumulator = attention.AttentionEntropy()
    accumulator.update(maps)
    with pytest.raises(ValueError, match="batch has 3 heads, earlier batches had 2"):
        accumulator.update(random_maps(1, 2, 3, 5))
