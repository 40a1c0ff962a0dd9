"""Datasets as ``tf.data`` pipelines of ``(images float32 NHWC in [-1, 1], labels int64)``.

``load_dataset(name, split, batch_size=..., image_size=..., seed=..., fraction=..., ...)`` is the one entry
point. Names:

* ``"shapes10"`` (default): a procedurally generated, seeded 10-class set of 32x32 RGB shapes on cluttered,
  noisy backgrounds (:mod:`vitcnn_tf.data.shapes`); 10,000 train / 2,000 test images, and the zoo's 30,000
  ``train_large`` / 2,000 ``validation`` images, generated in seconds and cached under ``cache_dir``. No download.
* ``"digits"``: scikit-learn's bundled 8x8 handwritten digits (1,797 images), upsampled to ``image_size``,
  grey repeated to RGB, a fixed stratified 80/20 train/test split.
* ``"image_folder"``: ``tfds.folder_dataset.ImageFolder(data_dir)``, a folder ``root/split/label/image.png``.
* any tensorflow-datasets name (``"cifar10"``, ``"imagenet2012"``, ...), with ``data_dir`` and ``download``
  passed through (``download=False``, the default, never touches the network).

``fraction`` / ``num_examples`` take a deterministic stratified subset of the split; subsets with the same
``subset_seed`` are nested (3% inside 10% inside 30%), see :mod:`vitcnn_tf.data.subsets`. ``num_examples`` is
class-balanced: every class gets its proportional share up to one example, so 5,000 images of ImageNet's
``validation`` split (1,000 classes of 50) are exactly 5 per class, and 1,000 are 1 per class.

``evaluation_split(name)`` is the labelled held-out split the experiments use (``validation`` for
``imagenet2012``, else ``test``); ``check_split(name, split)`` checks that it exists and that every label is a
class index (an unlabelled split, labels -1, is an error naming it).
"""

from vitcnn_tf.data.pipeline import (AUGMENTATIONS, DEFAULT_DATASET, check_split, dataset_info, evaluation_split,
                                     load_dataset, split_size)
from vitcnn_tf.data.preprocessing import augment, to_model_input
from vitcnn_tf.data.shapes import generate_shapes10
from vitcnn_tf.data.sources import EMBEDDED_DATASETS, IMAGE_FOLDER, DatasetInfo, default_cache_dir
from vitcnn_tf.data.subsets import stratified_subset_indices

__all__ = [
    "AUGMENTATIONS",
    "DEFAULT_DATASET",
    "EMBEDDED_DATASETS",
    "IMAGE_FOLDER",
    "DatasetInfo",
    "augment",
    "check_split",
    "dataset_info",
    "evaluation_split",
    "default_cache_dir",
    "generate_shapes10",
    "load_dataset",
    "split_size",
    "stratified_subset_indices",
    "to_model_input",
]
