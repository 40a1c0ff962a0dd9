"""The token layout helpers: the square-grid side (``vitcnn_tf.grids``) and the prefix-token count."""

import types

import numpy as np
import pytest

from vitcnn_tf import grids
from vitcnn_tf.analysis import tokens
from vitcnn_tf.models import vit


def test_square_side_matches_enumerated_squares():
    squares = {side * side: side for side in range(1, 40)}
    for count in range(-3, 40 * 40):
        assert grids.is_square(count) == (count in squares)
        if count in squares:
            assert grids.square_side(count) == squares[count]
        else:
            with pytest.raises(ValueError, match=rf"layer x: {count} tokens do not form a non-empty square grid"):
                grids.square_side(count, "layer x")


def test_infer_num_prefix_tokens():
    with_config = types.SimpleNamespace(config=types.SimpleNamespace(num_prefix_tokens=1), name="m")
    assert tokens.infer_num_prefix_tokens(with_config) == 1
    assert tokens.infer_num_prefix_tokens(types.SimpleNamespace(config=object(), name="r"), 50) == 0
    bare = types.SimpleNamespace(name="bare")
    assert tokens.infer_num_prefix_tokens(bare, 49) == 0
    assert tokens.infer_num_prefix_tokens(bare, 50) == 1
    for num_tokens in (51, None):
        with pytest.raises(ValueError, match="pass num_prefix_tokens explicitly"):
            tokens.infer_num_prefix_tokens(bare, num_tokens)


def test_resample_position_embedding_names_the_grid():
    posemb = np.zeros((1, 1 + 15, 4), np.float32)
    with pytest.raises(ValueError, match=r"resample_position_embedding: position embedding .* 15 tokens do not form"):
        vit.resample_position_embedding(posemb, 1 + 16, 1)
