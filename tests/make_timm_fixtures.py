"""Writes the timm fixtures of ``tests/test_models_timm.py`` into ``tests/fixtures/timm/`` (run once by hand).

Needs timm and torch, which the library and its tests do not::

    python3.11 -m venv timmvenv && timmvenv/bin/pip install torch timm safetensors numpy
    timmvenv/bin/python tests/make_timm_fixtures.py

For each tiny timm model (random weights of order-one scale, seeded) it writes ``NAME.safetensors``, timm's
``state_dict`` as timm saves it, and for the equivalence models ``NAME.npz``: ``images`` ``[n, S, S, 3]`` (the
input, channels last), ``logits`` and intermediate outputs captured with forward hooks, under the names of our
taps, transposed to channels last where timm computes channels first. The models:

    vit_cls            VisionTransformer: 32 px, patch 8, width 32, 2 blocks, 2 heads, MLP 64, 5 classes, CLS token
    vit_cls_prelogits  VisionTransformer: 16 px, patch 4, width 24, 1 block, 3 heads, MLP 48, with the pre-logits
                       layer of older timm releases (``pre_logits.fc`` of width 16, tanh)
    vit_gap            VisionTransformer: as vit_cls with 4 heads, class_token=False, global_pool="avg",
                       fc_norm=False (the vit_jax GAP ViT)
    resnet_bit         ResNetV2 as timm's BiT (StdConv2d eps 1e-8, "fixed" stem, GroupNorm): 32 px, stem width 8,
                       stages (2, 1, 1) of widths (32, 64, 128), 4 groups, 5 classes
    mixer              MlpMixer: 32 px, patch 8, width 32, 2 blocks, token MLP 16, channel MLP 64, 5 classes
    deit_distilled     VisionTransformerDistilled (DeiT, a distillation token): weights only, to be refused
    vit_gap_fc_norm    VisionTransformer, class_token=False, global_pool="avg" with timm's default fc_norm:
                       weights only, to be refused
"""

import collections
import functools
import os

import numpy as np
import timm
import torch
from safetensors.torch import save_file
from timm.layers import GroupNormAct, StdConv2d
from timm.models.deit import VisionTransformerDistilled
from timm.models.mlp_mixer import MlpMixer
from timm.models.resnetv2 import ResNetV2
from timm.models.vision_transformer import VisionTransformer

FOLDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "timm")
NUM_IMAGES = 2


def randomize(model, seed):
    """Order-one random weights: weights N(0, 1/fan_in), biases N(0, 0.1^2), norm scales 1 + N(0, 0.1^2), tokens
    and position embeddings N(0, 0.5^2), so that no zero or unit value hides a mapping mistake."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            leaf = name.rsplit(".", 1)[-1]
            is_norm = ".norm" in f".{name}" and leaf in ("weight", "bias")
            if is_norm and leaf == "weight":
                parameter.copy_(1.0 + 0.1 * noise)
            elif leaf == "bias" or is_norm:
                parameter.copy_(0.1 * noise)
            elif parameter.ndim >= 2 and "token" not in name and "pos_embed" not in name:
                parameter.copy_(noise / np.sqrt(np.prod(parameter.shape[1:])))
            else:
                parameter.copy_(0.5 * noise)
    return model.eval()


def images(size, seed):
    """``[NUM_IMAGES, size, size, 3]`` float32 images uniform in [-1, 1] (channels last)."""
    return np.random.default_rng(seed).uniform(-1.0, 1.0, (NUM_IMAGES, size, size, 3)).astype(np.float32)


def run_with_taps(model, hooks, forward, pixels, feature_maps=False):
    """Runs ``forward(model, x)`` on ``pixels`` (channels last); returns ``{"images", "logits", tap: output}`` with
    the outputs of the modules ``hooks`` {tap name: module}; ``feature_maps``: the 4-D outputs are ``[n, C, h, w]``
    maps, returned channels last (else they are attention probabilities ``[n, H, T, T]``, kept)."""
    captured = {}

    def hook(name, module, inputs, output):
        array = output.detach().numpy()
        captured[name] = array.transpose(0, 2, 3, 1) if feature_maps and array.ndim == 4 else array

    handles = [module.register_forward_hook(functools.partial(hook, name)) for name, module in hooks.items()]
    with torch.no_grad():
        logits = forward(model, torch.from_numpy(pixels.transpose(0, 3, 1, 2).copy()))
    for handle in handles:
        handle.remove()
    return {"images": pixels, "logits": logits.numpy(), **{name: captured[name] for name in hooks}}


def vit_hooks(model):
    """Our ViT tap names -> timm modules (attention probabilities are the input of ``attn_drop``, an identity)."""
    hooks = {"embedding": model.norm_pre}
    for index, block in enumerate(model.blocks):
        prefix = f"block{index:02d}"
        hooks.update({f"{prefix}/attn": block.attn.attn_drop, f"{prefix}/sa": block.ls1,
                      f"{prefix}/mlp_hidden": block.mlp.act, f"{prefix}/+mlp": block})
    hooks["encoder_norm"] = model.norm
    return hooks


def vit_forward(model, x):
    return model(x)


def prelogits_forward(model, x):
    """The forward of the older timm ViTs with a representation layer: pool -> pre_logits (Linear, tanh) -> head."""
    return model.head(model.pre_logits(model.forward_head(model.forward_features(x), pre_logits=True)))


def save(name, model, arrays=None):
    path = os.path.join(FOLDER, f"{name}.safetensors")
    save_file({key: value.contiguous() for key, value in model.state_dict().items()}, path)
    os.chmod(path, 0o644)
    if arrays is not None:
        np.savez(os.path.join(FOLDER, f"{name}.npz"), **arrays)


def main():
    os.makedirs(FOLDER, exist_ok=True)
    timm.layers.set_fused_attn(False)  # the explicit softmax, so that attn_drop sees the probabilities

    model = randomize(VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0,
                                        num_classes=5), seed=1)
    hooks = vit_hooks(model) | {"pre_logits": model.head_drop}
    save("vit_cls", model, run_with_taps(model, hooks, vit_forward, images(32, seed=1)))

    model = VisionTransformer(img_size=16, patch_size=4, embed_dim=24, depth=1, num_heads=3, mlp_ratio=2.0,
                              num_classes=5)
    model.pre_logits = torch.nn.Sequential(collections.OrderedDict(fc=torch.nn.Linear(24, 16), act=torch.nn.Tanh()))
    model.head = torch.nn.Linear(16, 5)
    model = randomize(model, seed=2)
    hooks = vit_hooks(model) | {"pre_logits": model.pre_logits}
    save("vit_cls_prelogits", model, run_with_taps(model, hooks, prelogits_forward, images(16, seed=2)))

    model = randomize(VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, mlp_ratio=2.0,
                                        num_classes=5, class_token=False, global_pool="avg", fc_norm=False), seed=3)
    hooks = vit_hooks(model) | {"pre_logits": model.head_drop}
    save("vit_gap", model, run_with_taps(model, hooks, vit_forward, images(32, seed=3)))

    model = randomize(ResNetV2(layers=(2, 1, 1), channels=(32, 64, 128), stem_chs=8, stem_type="fixed",
                               conv_layer=functools.partial(StdConv2d, eps=1e-8),
                               norm_layer=functools.partial(GroupNormAct, num_groups=4), num_classes=5), seed=4)
    hooks = {"root/conv": model.stem.conv, "root/pool": model.stem}
    for stage, blocks in enumerate(model.stages):
        for unit, block in enumerate(blocks.blocks):
            prefix = f"block{stage + 1}/unit{unit + 1:02d}"
            hooks.update({f"{prefix}/conv2": block.conv2, f"{prefix}/+res": block})
    hooks.update({"pre_head_norm": model.norm, "pre_logits": model.head.global_pool})
    arrays = run_with_taps(model, hooks, vit_forward, images(32, seed=4), feature_maps=True)
    arrays["pre_logits"] = arrays["pre_logits"].reshape(NUM_IMAGES, -1)  # pooled [n, 1, 1, C]
    save("resnet_bit", model, arrays)

    model = randomize(MlpMixer(img_size=32, patch_size=8, embed_dim=32, num_blocks=2, mlp_ratio=(0.5, 2.0),
                               num_classes=5), seed=5)
    hooks = {"stem": model.stem}
    for index, block in enumerate(model.blocks):
        prefix = f"block{index:02d}"
        hooks.update({f"{prefix}/token_mixing_hidden": block.mlp_tokens.act,
                      f"{prefix}/channel_mixing_hidden": block.mlp_channels.act, f"{prefix}/+channel_mixing": block})
    hooks.update({"encoder_norm": model.norm, "pre_logits": model.head_drop})
    save("mixer", model, run_with_taps(model, hooks, vit_forward, images(32, seed=5)))

    save("deit_distilled", randomize(VisionTransformerDistilled(img_size=16, patch_size=8, embed_dim=16, depth=1,
                                                                num_heads=2, num_classes=5), seed=6))
    save("vit_gap_fc_norm", randomize(VisionTransformer(img_size=16, patch_size=8, embed_dim=16, depth=1, num_heads=2,
                                                        num_classes=5, class_token=False, global_pool="avg"), seed=7))
    print(f"timm {timm.__version__}, torch {torch.__version__}: wrote", sorted(os.listdir(FOLDER)))


if __name__ == "__main__":
    main()
