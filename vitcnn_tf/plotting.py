"""Figure builders for the reproduction's plots (matplotlib, object-oriented: no pyplot state).

Every builder returns a ``matplotlib.figure.Figure``; save it atomically with
``vitcnn_tf.atomic_io.save_figure(figure, "path.png", dpi=...)``.

Layer names are grouped by their first path component (``block03/ln1`` -> ``block03``, ``block2/unit01/+res`` ->
``block2``; a name without ``/`` such as ``embedding`` or ``logits`` is a group of its own): heatmap axes are
ticked at each group's first layer and thin lines mark the boundaries between groups.
"""

import numpy as np
from matplotlib.figure import Figure

DEFAULT_CMAP = "magma"
MAX_CYCLE_SERIES = 10  # matplotlib's default colour cycle has 10 colours
SERIES_CMAP = "viridis"


def layer_group(name):
    """The group of a layer name: its first ``/``-separated component (``block2/unit01/conv1`` -> ``block2``)."""
    return str(name).split("/", 1)[0]


def layer_groups(names):
    """Consecutive runs of ``names`` sharing a group: a list of ``(group, start, stop)`` (``stop`` exclusive)."""
    groups = []
    for index, name in enumerate(names):
        group = layer_group(name)
        if groups and groups[-1][0] == group:
            groups[-1] = (group, groups[-1][1], index + 1)
        else:
            groups.append((group, index, index + 1))
    return groups


def heatmap(matrix, row_labels=None, col_labels=None, *, title=None, xlabel=None, ylabel=None, vmin=None,
            vmax=None, cmap=DEFAULT_CMAP, colorbar_label=None, origin="lower", figsize=(6.0, 5.0), annotate=False):
    """A plain heatmap of ``matrix [R, C]`` with one tick per row / column label (None: no ticks).

    ``origin="lower"`` puts row 0 at the bottom (the paper's layer heatmaps); ``annotate=True`` writes each value
    into its cell (for small matrices). NaN cells are drawn grey.
    """
    matrix = _as_matrix(matrix, "heatmap")
    figure = Figure(figsize=figsize, layout="constrained")
    axes = figure.add_subplot()
    image = _draw_matrix(axes, matrix, vmin, vmax, cmap, origin)
    for setter, labels, count, axis_name in ((axes.set_yticks, row_labels, matrix.shape[0], "row_labels"),
                                             (axes.set_xticks, col_labels, matrix.shape[1], "col_labels")):
        if labels is None:
            setter([])
            continue
        _check_length(labels, count, axis_name, matrix.shape)
        setter(np.arange(count), [str(label) for label in labels], fontsize=_tick_fontsize(count))
    if col_labels is not None and max((len(str(label)) for label in col_labels), default=0) > 3:
        axes.tick_params(axis="x", labelrotation=90)
    if annotate:
        for (row, col), value in np.ndenumerate(matrix):
            axes.text(col, row, "nan" if np.isnan(value) else f"{value:.2f}", ha="center", va="center",
                      fontsize=6, color="white" if np.isnan(value) or value < np.nanmean(matrix) else "black")
    _finish(figure, axes, image, title, xlabel, ylabel, colorbar_label)
    return figure


def cka_heatmap(matrix, row_names, col_names=None, *, title=None, xlabel=None, ylabel=None, vmin=0.0, vmax=1.0,
                cmap=DEFAULT_CMAP, figsize=(6.5, 5.5)):
    """CKA heatmap ``matrix [R, C]`` between layers ``row_names`` (y axis, input at the bottom) and ``col_names``
    (x axis; default ``row_names``), with ticks at the first layer of each block / stage group and thin lines at
    the group boundaries (see the module docstring)."""
    matrix = _as_matrix(matrix, "cka_heatmap")
    col_names = row_names if col_names is None else col_names
    _check_length(row_names, matrix.shape[0], "row_names", matrix.shape)
    _check_length(col_names, matrix.shape[1], "col_names", matrix.shape)
    figure = Figure(figsize=figsize, layout="constrained")
    axes = figure.add_subplot()
    image = _draw_matrix(axes, matrix, vmin, vmax, cmap, "lower")
    _group_axis(axes, row_names, "y")
    _group_axis(axes, col_names, "x")
    _finish(figure, axes, image, title, xlabel or "layer", ylabel or "layer", "CKA")
    return figure


def line_plot(series, *, title=None, xlabel=None, ylabel=None, style="line", xticks=None, xticklabels=None,
              hlines=(), ylim=None, legend_title=None, figsize=(6.0, 4.0), logx=False):
    """Lines or points, one per entry of ``series``: ``{label: (x, y)}`` or ``{label: (x, y, low, high)}``.

    ``x``, ``y`` (and ``low``, ``high``, an interval band / error bars around ``y``) are 1-D of equal length.
    ``style``: ``"line"`` (lines with markers; intervals as shaded bands) or ``"points"`` (markers only; intervals
    as vertical segments). ``hlines``: y values of dashed reference lines, or ``{legend label: y value}``.
    ``xticks`` / ``xticklabels`` set the x ticks.

    Up to ``MAX_CYCLE_SERIES`` series take the default colour cycle; more take ``series_colors`` (distinct colours
    along a perceptual colormap, in series order, e.g. blocks by depth) and the legend moves outside the axes, in
    as many columns as keep it within the figure's height (``legend_layout``).
    """
    if style not in ("line", "points"):
        raise ValueError(f"line_plot: style must be 'line' or 'points', got {style!r}")
    if not series:
        raise ValueError("line_plot: series is empty; expected {label: (x, y)} or {label: (x, y, low, high)}")
    figure = Figure(figsize=figsize, layout="constrained")
    axes = figure.add_subplot()
    colors = series_colors(len(series)) if len(series) > MAX_CYCLE_SERIES else [None] * len(series)
    for color, (label, values) in zip(colors, series.items()):
        if len(values) not in (2, 4):
            raise ValueError(f"line_plot: series[{label!r}] must be (x, y) or (x, y, low, high), got "
                             f"{len(values)} arrays")
        x, y, *band = (np.asarray(v, dtype=np.float64).reshape(-1) for v in values)
        if any(len(v) != len(x) for v in (y, *band)):
            raise ValueError(f"line_plot: series[{label!r}] arrays differ in length: "
                             f"{[len(v) for v in (x, y, *band)]}")
        if style == "line":
            (line,) = axes.plot(x, y, marker="o", markersize=3, label=str(label), color=color)
            if band:
                axes.fill_between(x, band[0], band[1], color=line.get_color(), alpha=0.2, linewidth=0)
        else:
            (points,) = axes.plot(x, y, "o", markersize=4, label=str(label), color=color)
            if band:  # segments from low to high: right even when an interval does not contain its estimate
                axes.vlines(x, band[0], band[1], color=points.get_color(), linewidth=1.2)
    labelled_lines = hlines.items() if isinstance(hlines, dict) else ((None, value) for value in hlines)
    for line_label, value in labelled_lines:
        axes.axhline(value, color="grey", linestyle="--", linewidth=0.8, label=line_label)
    if xticks is not None:
        axes.set_xticks(xticks, xticklabels if xticklabels is not None else [str(t) for t in xticks])
    if logx:
        axes.set_xscale("log")
    if ylim is not None:
        axes.set_ylim(*ylim)
    axes.set_title(title or "")
    axes.set_xlabel(xlabel or "")
    axes.set_ylabel(ylabel or "")
    axes.grid(True, alpha=0.3)
    if len(series) > 1 or legend_title or isinstance(hlines, dict):
        entries = len(series) + (len(hlines) if isinstance(hlines, dict) else 0)
        if len(series) > MAX_CYCLE_SERIES:
            columns, fontsize = legend_layout(entries)
            width, height = figure.get_size_inches()
            figure.set_size_inches(width + 1.4 * columns, height)
            axes.legend(title=legend_title, fontsize=fontsize, ncol=columns, loc="upper left",
                        bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, title_fontsize=fontsize + 1)
        else:
            axes.legend(title=legend_title, fontsize=8)
    return figure


def series_colors(count, cmap=SERIES_CMAP):
    """``count`` distinct RGBA colours along ``cmap`` (viridis: perceptually uniform, dark = first)."""
    import matplotlib

    colormap = matplotlib.colormaps[cmap]
    return [colormap(value) for value in np.linspace(0.0, 0.92, count)]


def legend_layout(entries, rows_per_column=16):
    """``(columns, font size)`` of a legend of ``entries`` entries placed beside the axes: at most
    ``rows_per_column`` rows per column, smaller type for long legends."""
    columns = max(1, -(-entries // rows_per_column))
    return columns, 7 if entries <= 2 * rows_per_column else 6


def image_grid(images, titles=None, *, ncols=4, title=None, cmap="viridis", shared_scale=False, colorbar=False,
               panel_size=2.0):
    """Grid of 2-D maps ``images`` (a sequence of ``[H, W]`` arrays), ``ncols`` per row, each titled.

    ``shared_scale=True`` uses one colour range for all panels (else each panel is scaled to its own range, as
    ERF maps are usually shown); ``colorbar=True`` adds a colour bar per panel.
    """
    images = [_as_matrix(image, f"image_grid: images[{index}]") for index, image in enumerate(images)]
    if not images:
        raise ValueError("image_grid: images is empty")
    if titles is not None:
        _check_length(titles, len(images), "titles", (len(images),))
    ncols = max(1, min(int(ncols), len(images)))
    nrows = -(-len(images) // ncols)
    figure = Figure(figsize=(panel_size * ncols, panel_size * nrows + (0.4 if title else 0.0)), layout="constrained")
    grid = figure.subplots(nrows, ncols, squeeze=False)
    limits = (np.nanmin([np.nanmin(i) for i in images]), np.nanmax([np.nanmax(i) for i in images]))
    for index, axes in enumerate(grid.flat):
        axes.set_xticks([])
        axes.set_yticks([])
        if index >= len(images):
            axes.set_axis_off()
            continue
        vmin, vmax = limits if shared_scale else (None, None)
        image = axes.imshow(images[index], cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
        if titles is not None:
            axes.set_title(str(titles[index]), fontsize=8)
        if colorbar:
            figure.colorbar(image, ax=axes, shrink=0.8)
    if title:
        figure.suptitle(title)
    return figure


def _as_matrix(matrix, caller):
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.ndim != 2 or 0 in matrix.shape:
        raise ValueError(f"{caller}: expected a non-empty 2-D matrix, got shape {matrix.shape}")
    return matrix


def _check_length(labels, expected, name, shape):
    if len(labels) != expected:
        raise ValueError(f"{name}: {len(labels)} labels for {expected} entries (matrix shape {tuple(shape)})")


def _draw_matrix(axes, matrix, vmin, vmax, cmap, origin):
    import matplotlib

    colormap = matplotlib.colormaps[cmap].with_extremes(bad="lightgrey")
    return axes.imshow(np.ma.masked_invalid(matrix), cmap=colormap, vmin=vmin, vmax=vmax, origin=origin,
                       interpolation="nearest", aspect="auto")


def _group_axis(axes, names, axis):
    """Ticks at group starts (labelled by group) and thin boundary lines between groups on ``axis``."""
    groups = layer_groups(names)
    labelled = _spaced_groups(groups, len(names))
    starts = [start for _, start, _ in labelled]
    labels = [group for group, _, _ in labelled]
    fontsize = _tick_fontsize(len(labelled))
    if axis == "x":
        axes.set_xticks(starts, labels, fontsize=fontsize, rotation=90)
    else:
        axes.set_yticks(starts, labels, fontsize=fontsize)
    draw = axes.axvline if axis == "x" else axes.axhline
    for _, start, _ in groups[1:]:
        draw(start - 0.5, color="white", linewidth=0.4, alpha=0.7)


def _spaced_groups(groups, num_layers, min_gap_fraction=0.035):
    """The groups whose start gets a tick label: larger groups first, skipping any start closer than
    ``min_gap_fraction`` of the axis to an already labelled one (adjacent one-layer groups would overlap)."""
    min_gap = max(1.0, min_gap_fraction * num_layers)
    chosen = []
    for group in sorted(groups, key=lambda g: (-(g[2] - g[1]), g[1])):
        if all(abs(group[1] - other[1]) >= min_gap for other in chosen):
            chosen.append(group)
    return sorted(chosen, key=lambda g: g[1])


def _tick_fontsize(count):
    return 8 if count <= 20 else 6 if count <= 40 else 4


def _finish(figure, axes, image, title, xlabel, ylabel, colorbar_label):
    axes.set_title(title or "")
    axes.set_xlabel(xlabel or "")
    axes.set_ylabel(ylabel or "")
    colorbar = figure.colorbar(image, ax=axes, shrink=0.85)
    if colorbar_label:
        colorbar.set_label(colorbar_label)
