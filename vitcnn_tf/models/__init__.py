"""Vision models with every representation tapped, loadable from the published ``.npz`` checkpoints.

``ViT`` (vit_jax), ``ResNetV2`` (BiT) and ``Mixer`` (MLP-Mixer) are Keras functional models built from a config
dataclass (``XConfig.from_name(preset, **overrides)``); ``model.taps`` lists their representations in forward
order. ``load_npz`` / ``save_npz`` read and write the release checkpoint formats, ``load_timm`` reads timm
``.safetensors`` weights (``timm``) and ``from_keras_hub`` converts a keras-hub ViT (``keras_hub``);
``get_model(preset, checkpoint, **overrides)`` builds any preset of the registry (``registry``). Modules:
``layers`` (Keras layers), ``base`` (``TappedModel``), ``config`` (config helpers), ``checkpoint_keys`` (rows of
the release-key tables).
"""

from vitcnn_tf.models.checkpoint import load_npz, save_npz
from vitcnn_tf.models.keras_hub import from_keras_hub
from vitcnn_tf.models.mixer import Mixer, MixerConfig
from vitcnn_tf.models.registry import get_model, model_family
from vitcnn_tf.models.resnet_v2 import ResNetV2, ResNetV2Config
from vitcnn_tf.models.timm import load_timm
from vitcnn_tf.models.vit import ViT, ViTConfig

__all__ = ["ViTConfig", "ViT", "ResNetV2Config", "ResNetV2", "MixerConfig", "Mixer", "load_npz", "save_npz", "get_model",
           "model_family", "load_timm", "from_keras_hub"]
