"""Dataset elements: the images of one element, whatever the element's structure."""


def element_images(element, caller="element_images"):
    """The images ``[n, H, W, C]`` of one dataset element: the element itself, the first item of an
    ``(images, labels, ...)`` tuple or list, or the ``"image"`` / ``"images"`` entry of a dict (tfds style).

    A dict without either entry raises ``ValueError`` naming ``caller`` and the keys it has.
    """
    if isinstance(element, (tuple, list)):
        return element[0]
    if isinstance(element, dict):
        for key in ("image", "images"):
            if key in element:
                return element[key]
        raise ValueError(f"{caller}: dataset elements are dicts without an 'image' or 'images' entry "
                         f"(keys: {sorted(element)})")
    return element
