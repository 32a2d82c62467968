"""The service's "segment" job: `run(scene, run, options, progress)` (service/jobs.py);
options checked by instascene.options (the service checks them before queueing)."""

from __future__ import annotations


def run(scene, run, options, progress):
    from ..options import split
    from .pipeline import segment_scene

    o = split("segment", options)
    return segment_scene(scene, run, o["segment"], device=o["device"], report=progress, quiet=True,
                         sam=o["sam_weights"])
