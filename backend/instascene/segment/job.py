"""The service's "segment" job: `run(scene, run, options, progress)` (service/jobs.py)."""

from __future__ import annotations


def run(scene, run, options, progress):
    from ..cli.segment import params_from
    from .pipeline import segment_scene

    options = dict(options or {})
    device = options.pop("device", "auto")
    weights = options.pop("weights", None)
    return segment_scene(scene, run, params_from(options), device=device, report=progress, quiet=True,
                         weights=weights)
