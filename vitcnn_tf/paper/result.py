"""What every analysis of :mod:`vitcnn_tf.paper` returns: arrays, findings and figures to draw."""

import dataclasses
from typing import Callable

import numpy as np

from vitcnn_tf import findings as findings_lib


@dataclasses.dataclass
class FigureSpec:
    """One figure of a result, drawn on demand.

    Attributes:
      file: file name the figure is saved under, e.g. ``"attention_distances.png"``.
      paper_figure: the paper's figure it reproduces (``"3"``, ``"C.1"``), or ``""`` for a figure of ours.
      caption: what the figure shows, in one or two sentences.
      look_for: what a reader should look for, as the paper states it.
      draw: ``() -> matplotlib.figure.Figure``.
    """

    file: str
    paper_figure: str
    caption: str
    look_for: str
    draw: Callable

    def to_dict(self):
        """JSON-able description (without ``draw``)."""
        return {"file": self.file, "paper_figure": self.paper_figure, "caption": self.caption,
                "look_for": self.look_for}


@dataclasses.dataclass
class SectionResult:
    """The outcome of one analysis.

    Attributes:
      experiment: the analysis name, e.g. ``"attention_distance"``.
      arrays: ``{file stem: {array name: np.ndarray}}``, each group saved as one ``.npz`` file.
      tables: ``{file stem: JSON-able dict}``, each saved as one ``.json`` file.
      findings: the paper's claims as :class:`vitcnn_tf.findings.Finding` objects.
      summary: JSON-able settings and headline numbers (models, example counts, ...).
      figures: the figures, in the paper's order.
    """

    experiment: str
    arrays: dict = dataclasses.field(default_factory=dict)
    tables: dict = dataclasses.field(default_factory=dict)
    findings: list = dataclasses.field(default_factory=list)
    summary: dict = dataclasses.field(default_factory=dict)
    figures: list = dataclasses.field(default_factory=list)

    def __post_init__(self):
        for stem, group in self.arrays.items():
            for name, value in group.items():
                if not isinstance(value, np.ndarray):
                    raise TypeError(f"SectionResult {self.experiment!r}: arrays[{stem!r}][{name!r}] must be a NumPy "
                                    f"array, got {type(value).__name__}")
        for finding in self.findings:
            if not isinstance(finding, findings_lib.Finding):
                raise TypeError(f"SectionResult {self.experiment!r}: findings must be Finding objects, got "
                                f"{type(finding).__name__}")

    def to_summary(self):
        """The JSON-able summary with the findings and the figure descriptions added."""
        return {"experiment": self.experiment, **self.summary,
                "findings": [finding.to_dict() for finding in self.findings],
                "figures": [figure.to_dict() for figure in self.figures]}
