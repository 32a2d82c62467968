"""The service's "complete" and "run" jobs (service/jobs.py). Options: "instances"
(ids; what the add-on's Complete selected sends), "generator", "weights", "device",
and the tuning keys of cli.complete.params_from."""

from __future__ import annotations


def _split(options: dict) -> tuple[dict, dict]:
    options = dict(options or {})
    common = {k: options.pop(k, None) for k in ("instances", "generator", "weights", "device")}
    return common, options


def run(scene, run, options, progress):
    from ..cli.complete import params_from
    from .pipeline import complete_run

    common, rest = _split(options)
    return complete_run(run, common["instances"], common["generator"] or "auto", common["weights"],
                        params_from(rest), device=common["device"] or "auto", report=progress, quiet=True)


def segment_and_complete(scene, run, options, progress):
    """Segmentation (first half of the progress bar), then completion."""
    from ..cli.complete import params_from
    from ..cli.segment import params_from as segment_params
    from ..segment.pipeline import segment_scene
    from .pipeline import complete_run

    common, rest = _split(options)
    seg_keys = {"iterations", "criterion", "threshold", "min_gaussians"}
    seg_opts = {k: rest.pop(k) for k in list(rest) if k in seg_keys}
    device = common["device"] or "auto"
    half = lambda offset: (lambda f, stage, msg="": progress(offset + 0.5 * f, stage, msg))  # noqa: E731
    seg = segment_scene(scene, run, segment_params(seg_opts), device=device, report=half(0.0), quiet=True,
                        weights=rest.pop("sam_weights", None))
    comp = complete_run(run, common["instances"], common["generator"] or "auto", common["weights"],
                        params_from(rest), device=device, report=half(0.5), quiet=True)
    return {"segment": seg, "complete": comp}
