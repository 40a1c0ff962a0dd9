"""Independent NumPy float64 forward pass of a BiT ResNetV2, written from the release checkpoint arrays.

It reads only ``{release key: array}`` (the BiT ``.npz`` layout) and a few hyper-parameters, never the Keras layers,
so it checks the Keras model's wiring, padding, strides, normalization and key layout against the release semantics.
``resnet_v2_forward`` returns the same tap names as ``ResNetV2.taps``; ``expected_release_shapes`` is the release
key -> shape table derived from the architecture description alone.
"""

import numpy as np


def expected_release_shapes(config):
    """The BiT release ``{key: array shape}`` table, written from the architecture description (not the model code)."""
    shapes = {}
    root = int(64 * config.width_factor)
    kernel = 7 if config.stem == "bit" else 3
    shapes["resnet/root_block/standardized_conv2d/kernel"] = (kernel, kernel, 3, root)
    cin = root
    for b, units in enumerate(config.block_counts):
        mid = root * 2**b
        for u in range(1, units + 1):
            prefix = f"resnet/block{b + 1}/unit{u:02d}"
            stride = 2 if (b > 0 and u == 1) else 1
            shapes[f"{prefix}/a/group_norm/gamma"] = shapes[f"{prefix}/a/group_norm/beta"] = (cin,)
            if stride != 1 or cin != 4 * mid:
                shapes[f"{prefix}/a/proj/standardized_conv2d/kernel"] = (1, 1, cin, 4 * mid)
            shapes[f"{prefix}/a/standardized_conv2d/kernel"] = (1, 1, cin, mid)
            shapes[f"{prefix}/b/group_norm/gamma"] = shapes[f"{prefix}/b/group_norm/beta"] = (mid,)
            shapes[f"{prefix}/b/standardized_conv2d/kernel"] = (3, 3, mid, mid)
            shapes[f"{prefix}/c/group_norm/gamma"] = shapes[f"{prefix}/c/group_norm/beta"] = (mid,)
            shapes[f"{prefix}/c/standardized_conv2d/kernel"] = (1, 1, mid, 4 * mid)
            cin = 4 * mid
    shapes["resnet/group_norm/gamma"] = shapes["resnet/group_norm/beta"] = (cin,)
    shapes["resnet/head/conv2d/kernel"] = (1, 1, cin, config.num_classes)
    shapes["resnet/head/conv2d/bias"] = (config.num_classes,)
    return shapes


def random_release_arrays(shapes, seed=0):
    """float32 arrays for ``{key: shape}``: GroupNorm gammas in [0.5, 1.5], betas and biases N(0, 0.2), kernels
    N(0, 0.3), so that no normalization or head is trivial."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for key, shape in shapes.items():
        if key.endswith("/gamma"):
            value = rng.uniform(0.5, 1.5, shape)
        elif key.endswith("/beta") or key.endswith("/bias"):
            value = rng.normal(0.0, 0.2, shape)
        else:
            value = rng.normal(0.0, 0.3, shape)
        arrays[key] = value.astype(np.float32)
    return arrays


def standardize_kernel(kernel, epsilon=1e-10):
    """Weight standardization of an HWIO kernel over H, W, I per output channel."""
    kernel = np.asarray(kernel, np.float64)
    mean = kernel.mean(axis=(0, 1, 2), keepdims=True)
    var = ((kernel - mean) ** 2).mean(axis=(0, 1, 2), keepdims=True)
    return (kernel - mean) / np.sqrt(var + epsilon)


def zero_pad(x, pad):
    """``[n, h, w, c] -> [n, h + 2 pad, w + 2 pad, c]`` with zeros."""
    return np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))


def _windows(x, size, stride):
    """``[n, h, w, c] -> [n, h_out, w_out, c, size, size]`` VALID sliding windows."""
    view = np.lib.stride_tricks.sliding_window_view(x, (size, size), axis=(1, 2))
    return view[:, ::stride, ::stride]


def conv_valid(x, kernel, stride=1):
    """VALID convolution (cross-correlation) of ``[n, h, w, i]`` with an HWIO kernel, by explicit windows."""
    size = kernel.shape[0]
    return np.einsum("nhwiyx,yxio->nhwo", _windows(x, size, stride), kernel)


def std_conv(x, kernel, stride=1, pad=0):
    """Zero-pad, then VALID convolution with the weight-standardized kernel."""
    return conv_valid(zero_pad(x, pad), standardize_kernel(kernel), stride)


def max_pool_valid(x, size, stride):
    return _windows(x, size, stride).max(axis=(-2, -1))


def group_norm(x, gamma, beta, num_groups, epsilon=1e-5):
    """GroupNorm(x) of ``x [n, H, W, C]``: statistics over H, W and the channels of each group."""
    n, h, w, c = x.shape
    grouped = x.reshape(n, h, w, num_groups, c // num_groups)
    mean = grouped.mean(axis=(1, 2, 4), keepdims=True)
    var = grouped.var(axis=(1, 2, 4), keepdims=True)
    return ((grouped - mean) / np.sqrt(var + epsilon)).reshape(n, h, w, c) * gamma + beta


def group_norm_relu(x, gamma, beta, num_groups, epsilon=1e-5):
    """relu(GroupNorm(x))."""
    return np.maximum(group_norm(x, gamma, beta, num_groups, epsilon), 0.0)


def resnet_v2_forward(params, images, stem, num_groups):
    """Forward ``images [n, S, S, 3]`` through the BiT ResNetV2 described by ``params`` (release keys).

    The stage / unit structure is read from the keys (``resnet/blockB/unitUU/...``); a unit's stride is 2 for the
    first unit of every stage but the first. Returns ``{tap name: float64 array}``.
    """
    p = {key: np.asarray(value, np.float64) for key, value in params.items()}
    taps = {}
    x = np.asarray(images, np.float64)
    root_kernel = p["resnet/root_block/standardized_conv2d/kernel"]
    if stem == "bit":
        x = std_conv(x, root_kernel, stride=2, pad=3)
        taps["root/conv"] = x
        x = max_pool_valid(zero_pad(x, 1), 3, 2)
        taps["root/pool"] = x
    else:
        x = std_conv(x, root_kernel, stride=1, pad=1)
        taps["root/conv"] = x

    units = sorted({"/".join(key.split("/")[1:3]) for key in p if key.startswith("resnet/block")},
                   key=lambda u: (int(u.split("/")[0][len("block"):]), int(u.split("/")[1][len("unit"):])))
    for unit in units:
        u = f"resnet/{unit}"
        stride = 2 if unit.endswith("unit01") and not unit.startswith("block1/") else 1
        preact = group_norm_relu(x, p[f"{u}/a/group_norm/gamma"], p[f"{u}/a/group_norm/beta"], num_groups)
        proj_key = f"{u}/a/proj/standardized_conv2d/kernel"
        skip = std_conv(preact, p[proj_key], stride=stride) if proj_key in p else x
        conv1 = std_conv(preact, p[f"{u}/a/standardized_conv2d/kernel"])
        h = group_norm_relu(conv1, p[f"{u}/b/group_norm/gamma"], p[f"{u}/b/group_norm/beta"], num_groups)
        conv2 = std_conv(h, p[f"{u}/b/standardized_conv2d/kernel"], stride=stride, pad=1)
        h = group_norm_relu(conv2, p[f"{u}/c/group_norm/gamma"], p[f"{u}/c/group_norm/beta"], num_groups)
        branch = std_conv(h, p[f"{u}/c/standardized_conv2d/kernel"])
        x = skip + branch
        taps.update({f"{unit}/preact": preact, f"{unit}/skip": skip, f"{unit}/conv1": conv1,
                     f"{unit}/conv2": conv2, f"{unit}/branch": branch, f"{unit}/+res": x})

    x = group_norm_relu(x, p["resnet/group_norm/gamma"], p["resnet/group_norm/beta"], num_groups)
    taps["pre_head_norm"] = x
    pooled = x.mean(axis=(1, 2))
    taps["pre_logits"] = pooled
    head_kernel = p["resnet/head/conv2d/kernel"]
    taps["logits"] = pooled @ head_kernel.reshape(head_kernel.shape[2], head_kernel.shape[3]) \
        + p["resnet/head/conv2d/bias"]
    return taps
