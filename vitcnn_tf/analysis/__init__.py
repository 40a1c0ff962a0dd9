"""The paper's analyses beyond CKA, as library functions (NumPy float64 results).

  attention         mean attention distance per head (Section 5, Figures 3-4) and its streaming accumulator
  receptive_field   effective receptive fields of any tap (Figure 6) and their extent
  skip              skip-connection norm ratios ||z|| / ||f(z)|| per unit and token (Figure 7)
  localization      token-vs-input-patch CKA maps and localization scores (Figures 9-10)
  probes            closed-form few-shot ridge probes, big_vision recipe (Figures 11, 13)
  bootstrap         percentile bootstrap intervals over examples and seeds (the report's error bars)
  tokens            shared helper: CLS / patch-grid token layout
"""

from vitcnn_tf.analysis import (  # noqa: F401
    attention,
    bootstrap,
    localization,
    probes,
    receptive_field,
    skip,
    tokens,
)
