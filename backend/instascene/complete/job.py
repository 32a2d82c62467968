"""The service's "complete" and "run" jobs (service/jobs.py). Options (checked by
instascene.options): "instances" (ids; what the add-on's Complete selected sends),
"generator", "weights", "device", the completion tuning keys and, for "run", the
segmentation keys and "sam_weights"."""

from __future__ import annotations


def run(scene, run, options, progress):
    from ..options import split
    from .pipeline import complete_run

    o = split("complete", options)
    return complete_run(run, o["instances"], o["generator"], o["weights"], o["complete"], device=o["device"],
                        report=progress, quiet=True)


def segment_and_complete(scene, run, options, progress):
    """Segmentation (first half of the progress bar), then completion."""
    from ..options import split
    from ..segment.pipeline import segment_scene
    from .pipeline import complete_run

    o = split("run", options)
    half = lambda offset: (lambda f, stage, msg="": progress(offset + 0.5 * f, stage, msg))  # noqa: E731
    seg = segment_scene(scene, run, o["segment"], device=o["device"], report=half(0.0), quiet=True,
                        sam=o["sam_weights"])
    comp = complete_run(run, o["instances"], o["generator"], o["weights"], o["complete"], device=o["device"],
                        report=half(0.5), quiet=True)
    return {"segment": seg, "complete": comp}
