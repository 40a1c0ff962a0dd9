"""The paper's claims as effect sizes: for every finding key, the threshold its statistic must pass and why.

A finding (:mod:`vitcnn_tf.findings`) holds when its whole interval is beyond ``threshold`` on the side of
``direction``. The thresholds state the size of the effect the paper describes, not only its sign; ``rationale``
says where each comes from. ``no_effect`` is the statistic's value when there is no effect
at all (0 for a difference, 1 for a ratio): a second similarity measure, on another scale than CKA, *survives* when
it lies beyond it. ``learned`` marks claims about what training produces: when such a claim already holds
for the same architectures at initialisation (the control of every finding), its verdict is taken on the trained
value minus the control's (training must move the statistic the claimed way), see
:func:`vitcnn_tf.findings.pool_seeds`. A claim with ``learned=False`` describes the trained network as it is; one
that holds at initialisation is still marked as saying nothing about learning.
"""

import dataclasses
import math


@dataclasses.dataclass(frozen=True)
class Claim:
    """The effect size of one finding: ``value > threshold`` (``direction="greater"``) or ``value < threshold``."""

    key: str
    threshold: float
    direction: str
    effect: str
    rationale: str
    learned: bool
    no_effect: float = 0.0


_UNIFORM = "the uniform-attention distance (every key weighted alike)"
CLAIMS = {claim.key: claim for claim in (
    Claim("vit_uniform_similarity", 0.2, "greater",
          "the ViT's mean lower-to-upper-half CKA exceeds the ResNet's by more than 0.2",
          "Figure 1: the ViT's lower and upper halves are strongly similar, the ResNet's stages are not; 0.2 is a "
          "fifth of CKA's range", learned=False),
    Claim("resnet_lower_half_matches_vit_lowest_quarter", 0.1875, "less",
          "the ViT layers most similar to the ResNet's lower half lie at a mean normalised depth below 0.1875",
          "Figure 2: the lower half of the ResNet matches about the lowest quarter of the ViT (mean depth 0.125); a "
          "proportional match gives 0.25; 0.1875 is halfway", learned=False, no_effect=0.25),
    Claim("lower_layers_mix_local_and_global_heads", 0.0, "greater",
          f"the lowest blocks hold a head below 0.5x and a head above 0.8x {_UNIFORM}, and the highest blocks no "
          "head below 0.8x (the smallest of the three margins, in units of the uniform distance, is positive)",
          "Figure 3: lower blocks of the large-data ViTs have heads at a fraction of the distance of the global "
          "ones, upper blocks attend only globally", learned=True),
    Claim("less_data_no_local_heads", 0.0, "greater",
          f"the full-data ViT's lowest blocks hold a head below 0.5x {_UNIFORM} and the little-data ViT's none "
          "(the smaller of the two margins, in units of the uniform distance, is positive)",
          "Figure 4: the ImageNet-only ViTs learn no local heads in their lower blocks, the large-data ones do",
          learned=True),
    Claim("local_heads_most_resnet_like", -0.5, "less",
          "the correlation between a head subset's mean distance and its CKA with the lower ResNet layers is below "
          "-0.5",
          "Figure 5: CKA with the lower ResNet layers falls steadily as the heads become more global; -0.5 asks for "
          "a strong negative correlation", learned=True),
    Claim("vit_erf_larger_in_lower_layers", 1.5, "greater",
          "the ViT's lowest-block effective receptive field is more than 1.5 times as wide as the ResNet's first "
          "stage's",
          "Figure 6: the ViT's lower-layer ERFs already span much of the image, the ResNet's stay a few pixels wide",
          learned=False, no_effect=1.0),
    Claim("vit_skip_branch_dominates", math.log(2.0), "greater",
          "the ViT's norm ratio ||z|| / ||f(z)|| is more than twice the ResNet's (geometric mean over units)",
          "Figure 7: the ViT's ratios are several times the ResNet's in every block", learned=False),
    Claim("cls_spatial_phase_change", math.log(2.0), "greater",
          "the CLS-to-spatial ratio of norm ratios falls more than twofold from the first to the second half",
          "Figure 7 (right): skip connections carry the CLS token in the first half and the spatial tokens in the "
          "second, each by a large factor", learned=True),
    Claim("skip_removal_partitions_representation", 0.1, "greater",
          "removing a middle block's skip connections raises the partition scalar (within-side minus across-block "
          "CKA) by more than 0.1",
          "Figure 8: without a middle block's skip connections, layers before and after it share little "
          "similarity; 0.1 is a tenth of CKA's range", learned=False),
    Claim("cls_vit_tokens_localize", 2.0, "greater",
          "a top-layer token's CKA with its own input patch is more than twice its share under no spatial "
          "information (own-patch share / (k/P))",
          "Figure 9: final-layer tokens are far more similar to their own patch than to others", learned=False,
          no_effect=1.0),
    Claim("gap_vit_localizes_less", 0.25, "greater",
          "the GAP ViT's top-layer own-patch share is more than a quarter below the CLS ViT's (relative drop)",
          "Figure 10: the GAP ViT's final-layer tokens localize much more weakly", learned=True),
    Claim("cls_vit_spatial_tokens_probe_poorly", 0.05, "greater",
          "single top-layer spatial tokens of the GAP ViT classify more than 5 points better than the CLS ViT's",
          "Figure 11: the CLS ViT's spatial tokens give much lower probe accuracy than the GAP ViT's", learned=True),
    Claim("less_data_hurts_higher_layers_more", 0.1, "greater",
          "the CKA between a little-data model and the full-data model is more than 0.1 higher in the lowest blocks "
          "than in the highest",
          "Figure 12: lower layers stay similar with 3% of the data, higher layers diverge; 0.1 is a tenth of "
          "CKA's range", learned=True),
)}


def claim(key):
    """The :class:`Claim` of finding ``key``; ValueError naming the known keys."""
    if key not in CLAIMS:
        raise ValueError(f"no claim for finding {key!r}; known: {', '.join(CLAIMS)}")
    return CLAIMS[key]


def threshold(key):
    """``(threshold, direction)`` of finding ``key``: the arguments of its :class:`vitcnn_tf.findings.Finding`."""
    found = claim(key)
    return found.threshold, found.direction
