"""The paper's analyses as library code: one module per experiment of Sections 4 to 8.

Each module's ``run(...)`` takes Keras models (ours, any loaded checkpoint, or the CPU zoo) and ``tf.data``
datasets of ``(images [b, S, S, 3], labels [b])`` batches, and returns a :class:`~vitcnn_tf.paper.result.SectionResult`:
the arrays, the findings (with intervals and verdicts) and the figures to draw. The modules know nothing of zoo
recipe names, file layouts or command lines; ``experiments/`` holds the thin command lines that do.

  representation_structure   Section 4, Figures 1-2: within- and cross-model CKA heatmaps.
  attention_distance         Section 5, Figures 3-4: mean attention distance of every head.
  local_global_heads         Section 5, Figure 5: local and global heads against the ResNet.
  receptive_fields           Section 5, Figure 6 and Appendix C: effective receptive fields.
  skip_connections           Section 6, Figures 7-8: skip-connection norm ratios and skip removal.
  localization               Section 7, Figures 9-10: token-to-patch localization.
  linear_probes              Section 7, Figure 11: per-token few-shot linear probes.
  data_scale                 Section 8, Figures 12-13: effects of pre-training data scale.

Shared by them:

  common                     the models: labels and roles, families, image sizes, normalised depths, taps.
  evaluation                 the data: passes, batches and arrays, accuracies, progress bars, finding detail.
  result                     SectionResult and FigureSpec, what every run(...) returns.
"""
