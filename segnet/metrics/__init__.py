"""Metrics: segmentation quality (:mod:`.segmentation`) and checkerboard artifacts (:mod:`.artifacts`).

The artifact functions that need TensorFlow import it lazily, so ``import segnet.metrics`` is cheap.
"""

from segnet.metrics.artifacts import (
    artifact_const_response,
    artifact_excess,
    artifact_overlap_unevenness,
    artifact_periodic_energy,
    artifact_periodic_energy_gt,
    const_response_maps,
    overlap_counts,
    periodic_energy_scores,
)
from segnet.metrics.segmentation import (
    DEFAULT_PROB_THRESHOLDS,
    TGS_THRESHOLDS,
    dice,
    dice_scores,
    iou,
    iou_scores,
    pixel_iou,
    score_gaps,
    score_table,
    search_threshold,
    tgs_map,
    tgs_scores,
)

__all__ = [
    "DEFAULT_PROB_THRESHOLDS",
    "TGS_THRESHOLDS",
    "artifact_const_response",
    "artifact_excess",
    "artifact_overlap_unevenness",
    "artifact_periodic_energy",
    "artifact_periodic_energy_gt",
    "const_response_maps",
    "dice",
    "dice_scores",
    "iou",
    "iou_scores",
    "overlap_counts",
    "periodic_energy_scores",
    "pixel_iou",
    "score_gaps",
    "score_table",
    "search_threshold",
    "tgs_map",
    "tgs_scores",
]
