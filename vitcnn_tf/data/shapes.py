"""``shapes10``: a procedurally generated, seeded 10-class image set (32x32 RGB) that needs no download.

Every image holds one bright foreground shape whose class is the label (disk, ring, square, frame, triangle,
diamond, plus, cross, bars, crescent), at a random position (mostly inside the frame), size (half-size 6.5-12
px), rotation (+-15 degrees), aspect (+-15 %) and colour (every channel >= 0.55) over a darker random
two-colour gradient (channels <= 0.5), with up to three small distractor blobs behind it (random colours,
half-size <= 2.5 px), up to one thin occluding line in front of it and Gaussian pixel noise (sigma 0.02-0.06).
Colour carries no class information and the object can be anywhere and of any size: classifying it needs both
local (edges, corners) and global (layout of the whole object) processing.

Generation is vectorised NumPy (thousands of images per second on one core) and deterministic in
``(GENERATOR_VERSION, num_examples, seed)``; :func:`load_shapes10` caches the arrays on disk under that key.
"""

import hashlib
import os
import zipfile

import numpy as np

from vitcnn_tf import atomic_io

GENERATOR_VERSION = 1
IMAGE_SIZE = 32
CLASS_NAMES = (
    "disk", "ring", "square", "frame", "triangle", "diamond", "plus", "cross", "bars", "crescent",
)
NUM_CLASSES = len(CLASS_NAMES)

_NUM_BLOBS = 3
_NUM_LINES = 1
_MIN_HALF_SIZE = 6.5
_MAX_NOISE = 0.06
_BACKGROUND_MAX = 0.5
_FOREGROUND_MIN = 0.55
_CHUNK = 2048  # images rendered at once; bounds the float32 working set to ~ 50 MB


def generate_shapes10(num_examples, seed, image_size=IMAGE_SIZE):
    """Render ``num_examples`` images; returns ``(images uint8 [n, s, s, 3], labels int64 [n])``.

    Classes are exactly balanced up to ``num_examples % 10`` and shuffled. The result depends only on
    ``(num_examples, seed, image_size)`` (and ``GENERATOR_VERSION``), not on any global random state.
    """
    if int(num_examples) != num_examples or num_examples < 1:
        raise ValueError(f"generate_shapes10: num_examples must be a positive integer, got {num_examples!r}")
    if int(image_size) != image_size or image_size < 8:
        raise ValueError(f"generate_shapes10: image_size must be an integer >= 8, got {image_size!r}")
    num_examples, image_size = int(num_examples), int(image_size)
    rng = np.random.default_rng([GENERATOR_VERSION, int(seed)])
    labels = rng.permutation(np.arange(num_examples) % NUM_CLASSES).astype(np.int64)
    images = np.empty((num_examples, image_size, image_size, 3), np.uint8)
    for start in range(0, num_examples, _CHUNK):
        stop = min(start + _CHUNK, num_examples)
        images[start:stop] = _render(labels[start:stop], rng, image_size)
    return images, labels


def load_shapes10(num_examples, seed, cache_dir=None):
    """:func:`generate_shapes10` with an on-disk cache ``<cache_dir>/shapes10/v<version>_n<n>_seed<seed>.npz``.

    ``cache_dir=None`` disables caching. A cache file that cannot be read or does not match the key is
    regenerated; files are written atomically.
    """
    if cache_dir is None:
        return generate_shapes10(num_examples, seed)
    path = os.path.join(
        os.fspath(cache_dir), "shapes10", f"v{GENERATOR_VERSION}_n{int(num_examples)}_seed{int(seed)}.npz"
    )
    cached = _read_cache(path, num_examples)
    if cached is not None:
        return cached
    images, labels = generate_shapes10(num_examples, seed)
    atomic_io.save_npz(path, images=images, labels=labels, checksum=np.array(_checksum(images, labels)))
    return images, labels


def _read_cache(path, num_examples):
    try:
        with np.load(path) as data:
            images, labels, checksum = data["images"], data["labels"], str(data["checksum"])
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
        return None
    if images.shape != (num_examples, IMAGE_SIZE, IMAGE_SIZE, 3) or checksum != _checksum(images, labels):
        return None
    return images, labels


def _checksum(images, labels):
    digest = hashlib.sha256(images.tobytes())
    digest.update(labels.astype(np.int64).tobytes())
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------------------
# Rendering. Shapes are signed distance functions in object units (<= 0 inside, object half-size 1); the
# pixel coverage is clip(0.5 - sdf * half_size_px, 0, 1), i.e. about one pixel of anti-aliasing.


def _sdf_disk(u, v):
    return np.hypot(u, v) - 1.0


def _sdf_ring(u, v):
    return np.abs(np.hypot(u, v) - 0.75) - 0.25


def _sdf_square(u, v):
    return np.maximum(np.abs(u), np.abs(v)) - 0.8


def _sdf_frame(u, v):
    return np.abs(np.maximum(np.abs(u), np.abs(v)) - 0.65) - 0.22


def _sdf_triangle(u, v):
    # apex (0, -0.95) at the top (v grows downwards), base v = 0.75 from u = -0.95 to 0.95
    side = (np.abs(u) * 1.7 - (v + 0.95) * 0.95) / np.hypot(1.7, 0.95)
    return np.maximum(side, v - 0.75)


def _sdf_diamond(u, v):
    return (np.abs(u) + np.abs(v) - 1.05) / np.sqrt(2.0)


def _sdf_plus(u, v):
    au, av = np.abs(u), np.abs(v)
    return np.minimum(np.maximum(au - 0.3, av - 1.0), np.maximum(av - 0.3, au - 1.0))


def _sdf_cross(u, v):
    return _sdf_plus((u + v) / np.sqrt(2.0), (u - v) / np.sqrt(2.0))


def _sdf_bars(u, v):
    return np.maximum(np.abs(np.abs(v) - 0.55) - 0.22, np.abs(u) - 0.95)


def _sdf_crescent(u, v):
    return np.maximum(np.hypot(u, v) - 1.0, 0.8 - np.hypot(u - 0.5, v))


_SHAPES = (
    _sdf_disk, _sdf_ring, _sdf_square, _sdf_frame, _sdf_triangle,
    _sdf_diamond, _sdf_plus, _sdf_cross, _sdf_bars, _sdf_crescent,
)
assert len(_SHAPES) == NUM_CLASSES


def _coverage(sdf_px):
    return np.clip(0.5 - sdf_px, 0.0, 1.0)[..., None]


def _column(values):
    """[n] -> [n, 1, 1] for broadcasting against the pixel grid."""
    return values[:, None, None]


def _render(labels, rng, size):
    """Float rendering of one chunk; returns uint8 [n, size, size, 3]."""
    n = labels.shape[0]
    scale = size / 32.0
    ys, xs = np.meshgrid(np.arange(size, dtype=np.float32) + 0.5, np.arange(size, dtype=np.float32) + 0.5,
                         indexing="ij")
    xs, ys = xs[None], ys[None]  # [1, s, s]

    # Background: a linear gradient between two random colours along a random direction.
    colour_a = rng.uniform(0.0, _BACKGROUND_MAX, (n, 3)).astype(np.float32)
    colour_b = np.clip(colour_a + rng.uniform(-0.2, 0.2, (n, 3)), 0.0, _BACKGROUND_MAX).astype(np.float32)
    angle = rng.uniform(0.0, 2 * np.pi, n).astype(np.float32)
    t = (np.cos(_column(angle)) * (xs - size / 2) + np.sin(_column(angle)) * (ys - size / 2)) / size + 0.5
    t = np.clip(t, 0.0, 1.0)[..., None]
    image = colour_a[:, None, None] * (1 - t) + colour_b[:, None, None] * t

    # Distractor blobs (small disks and squares, half-size <= 2.5 px, well below the smallest object).
    for _ in range(_NUM_BLOBS):
        present = rng.uniform(size=n) < 0.5
        centre = rng.uniform(0.0, size, (2, n)).astype(np.float32)
        radius = rng.uniform(1.0, 2.5, n).astype(np.float32) * scale
        du, dv = xs - _column(centre[0]), ys - _column(centre[1])
        round_blob = _column(rng.uniform(size=n) < 0.5)
        sdf = np.where(round_blob, np.hypot(du, dv), np.maximum(np.abs(du), np.abs(dv))) - _column(radius)
        alpha = _coverage(sdf) * present[:, None, None, None]
        colour = rng.uniform(0.0, 1.0, (n, 3)).astype(np.float32)[:, None, None]
        image = image * (1 - alpha) + colour * alpha

    # The object: random centre (mostly inside), half-size, rotation, aspect, and a colour contrasting with
    # the background mean.
    half = rng.uniform(_MIN_HALF_SIZE, 12.0, n).astype(np.float32) * scale
    cx = rng.uniform(0.8 * half, size - 0.8 * half).astype(np.float32)
    cy = rng.uniform(0.8 * half, size - 0.8 * half).astype(np.float32)
    theta = rng.uniform(-np.pi / 12, np.pi / 12, n).astype(np.float32)
    aspect = rng.uniform(0.85, 1.15, (2, n)).astype(np.float32)
    dx, dy = xs - _column(cx), ys - _column(cy)
    cos, sin = np.cos(_column(theta)), np.sin(_column(theta))
    u = (cos * dx + sin * dy) / _column(half * aspect[0])
    v = (-sin * dx + cos * dy) / _column(half * aspect[1])
    sdf = np.empty((n, size, size), np.float32)
    for label, shape_sdf in enumerate(_SHAPES):
        rows = labels == label
        sdf[rows] = shape_sdf(u[rows], v[rows])
    alpha = _coverage(sdf * _column(half))
    colour = rng.uniform(_FOREGROUND_MIN, 1.0, (n, 3)).astype(np.float32)[:, None, None]
    image = image * (1 - alpha) + colour * alpha

    # Occluding lines in front of the object (0-2 per image, width ~1.2 px).
    for _ in range(_NUM_LINES):
        present = rng.uniform(size=n) < 0.4
        p0, p1 = rng.uniform(0.0, size, (2, 2, n)).astype(np.float32)
        distance = _segment_distance(xs, ys, p0, p1)
        alpha = _coverage(distance - 0.6 * scale) * present[:, None, None, None]
        colour = rng.uniform(0.0, 1.0, (n, 3)).astype(np.float32)[:, None, None]
        image = image * (1 - alpha) + colour * alpha

    noise_level = rng.uniform(0.02, _MAX_NOISE, n).astype(np.float32)[:, None, None, None]
    image = image + noise_level * rng.standard_normal(image.shape, dtype=np.float32)
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


def _segment_distance(xs, ys, p0, p1):
    """Distance [n, s, s] from each pixel centre to the segment p0-p1 (p0, p1: [2, n])."""
    ax, ay = _column(p0[0]), _column(p0[1])
    bx, by = _column(p1[0] - p0[0]), _column(p1[1] - p0[1])
    t = ((xs - ax) * bx + (ys - ay) * by) / np.maximum(bx * bx + by * by, 1e-6)
    t = np.clip(t, 0.0, 1.0)
    return np.hypot(xs - ax - t * bx, ys - ay - t * by)
