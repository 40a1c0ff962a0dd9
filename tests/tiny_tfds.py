"""A tiny ImageNet-like tensorflow-datasets builder, prepared by tfds itself (``download_and_prepare``) into a test's
``data_dir``: splits ``train`` and ``validation`` as tfds ``imagenet2012`` has, and optionally a ``test`` split
labelled -1 as imagenet2012's unlabelled test split is. No network: the examples are generated.

Each image's mean brightness encodes its label (``40 + 80 * label``), so that tests can check that images stay
with their labels.
"""

import numpy as np
import tensorflow_datasets as tfds

NUM_CLASSES = 3
IMAGE_SIZE = 16
SPLITS = {"train": (60, 0), "validation": (24, 1)}  # split -> (examples, seed)


def examples(count, seed, size=IMAGE_SIZE):
    """``(images uint8 [count, size, size, 3], labels [count])``: label ``i % NUM_CLASSES``, brightness from it."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % NUM_CLASSES
    images = np.stack([np.full((size, size, 3), 40 + 80 * label, np.int64) for label in labels])
    images = np.clip(images + rng.integers(-10, 11, images.shape), 0, 255).astype(np.uint8)
    return images, labels


class VitcnnTinyImagenetLike(tfds.core.GeneratorBasedBuilder):
    """3 classes of 16x16 RGB images: ``train`` 60, ``validation`` 24 and an unlabelled ``test`` (labels -1)."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(IMAGE_SIZE, IMAGE_SIZE, 3)),
                "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
            }),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        return {**{split: self._generate_examples(*spec) for split, spec in SPLITS.items()},
                "test": self._generate_examples(6, 2, unlabelled=True)}

    def _generate_examples(self, count, seed, unlabelled=False):
        images, labels = examples(count, seed)
        for index, (image, label) in enumerate(zip(images, labels)):
            yield index, {"image": image, "label": -1 if unlabelled else int(label)}


NAME = VitcnnTinyImagenetLike.name  # "vitcnn_tiny_imagenet_like"


def prepare(data_dir):
    """Prepares the dataset in ``data_dir`` with ``download_and_prepare`` (as tfds prepares imagenet2012 from its
    manual files); returns ``data_dir``."""
    VitcnnTinyImagenetLike(data_dir=str(data_dir)).download_and_prepare()
    return str(data_dir)
