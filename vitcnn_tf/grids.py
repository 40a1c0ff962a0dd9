"""Square grids of patch tokens: the side ``g`` of a ``g x g`` grid holding ``g * g`` tokens.

The one grid helper of the package: ``vitcnn_tf.models`` (position-embedding resampling) and the analyses
(token layouts, prefix-token inference, attention distances, receptive fields, probes, localization) all use it.
"""

import math


def is_square(count):
    """True when ``count`` (an int) tokens form a non-empty square grid (``count = g * g``, ``g >= 1``)."""
    return count > 0 and math.isqrt(count) ** 2 == count


def square_side(count, name="tokens"):
    """Side ``g >= 1`` of the square grid of ``count = g * g`` tokens; ``ValueError`` naming ``name`` otherwise."""
    if not is_square(count):
        raise ValueError(f"{name}: {count} tokens do not form a non-empty square grid; expected g * g tokens")
    return math.isqrt(count)
