"""The evaluation harness (issue 3): metrics on analytic shapes and on generated scenes.

    metrics.py       pure, vectorised metric functions (Chamfer-L1, F-score, volume IoU,
                     PSNR, Hungarian mIoU); every constant is a parameter
    segmentation.py  `evaluate_segmentation(run_dir, gt_dir)`: 3D mIoU on Gaussians, 2D mIoU on views
    completion.py    `evaluate_completion(run_dir, gt_dir)`: per-object geometry and PSNR,
                     completed vs the observed baseline
    layout.py        `evaluate_layout(run_dir, gt_dir)`: the background with every object moved
                     aside: coverage of the support surface, PSNR from the scene's views

Definitions: shared/reference/generation.md §6. Imports of torch happen inside the
functions that render, so importing this package stays cheap.
"""

from .metrics import (
    Chamfer,
    FScore,
    HungarianResult,
    chamfer_l1,
    fscore,
    fscore_curve,
    hungarian_miou,
    nearest_distances,
    psnr,
    sample_surface,
    volume_iou,
)

__all__ = [
    "Chamfer",
    "FScore",
    "HungarianResult",
    "chamfer_l1",
    "fscore",
    "fscore_curve",
    "hungarian_miou",
    "nearest_distances",
    "psnr",
    "sample_surface",
    "volume_iou",
]
