"""Job options, checked once where they enter: the command line and the service's
POST /jobs (which answers 422 naming the field before any job exists).

Each kind's options map onto its parameter dataclasses (segment.pipeline.SegmentParams,
complete.pipeline.CompleteParams); a value of the wrong type, out of range or not among
the choices is an `OptionError` naming the option, never a job that dies later.
"""

from __future__ import annotations

import math

from .errors import InstaSceneError

DEVICES = ("auto", "cpu", "cuda")
SEGMENT_KEYS = ("iterations", "criterion", "min_gaussians")
COMPLETE_KEYS = ("finetune_iterations", "resolution", "diffusion_steps", "mesh_resolution")


class OptionError(InstaSceneError):
    """A job option a user gave is of the wrong type, out of range or unknown."""

    def __init__(self, name: str, message: str):
        self.option = name
        super().__init__(f"option {name!r} {message}")


def whole(name: str, value, minimum: int = 1, maximum: int = 1_000_000) -> int:
    """An integer in [minimum, maximum]; booleans, fractions, NaN and text are refused."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            (isinstance(value, float) and (not math.isfinite(value) or not value.is_integer())):
        raise OptionError(name, f"must be a whole number, got {value!r}")
    if not minimum <= value <= maximum:
        raise OptionError(name, f"must be between {minimum} and {maximum}, got {value!r}")
    return int(value)


def choice(name: str, value, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise OptionError(name, f"must be one of {', '.join(choices)}, got {value!r}")
    return value


def device(value, name: str = "device") -> str:
    """'auto', 'cpu' or 'cuda' (this last only where CUDA is)."""
    choice(name, value, DEVICES)
    if value == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise OptionError(name, "is 'cuda', but CUDA is not available on this machine")
    return value


def folder(name: str, value) -> str | None:
    if value is not None and not isinstance(value, str):
        raise OptionError(name, f"must be a folder path, got {value!r}")
    return value


def _unknown(options: dict, known: tuple[str, ...], what: str) -> None:
    extra = sorted(set(options) - set(known))
    if extra:
        raise OptionError(extra[0], f"is not a {what} option; known: {', '.join(known)}")


def segment_params(options: dict):
    """SegmentParams from the segmentation keys of `options` (None values: defaults)."""
    from .render import CRITERIA
    from .segment.pipeline import SegmentParams

    _unknown(options, SEGMENT_KEYS, "segmentation")
    p = SegmentParams()
    if options.get("iterations") is not None:
        p.features.iterations = whole("iterations", options["iterations"], 1, 100_000)
    if options.get("criterion") is not None:
        p.criterion = choice("criterion", options["criterion"], CRITERIA)
    if options.get("min_gaussians") is not None:
        p.min_gaussians = whole("min_gaussians", options["min_gaussians"], 1, 1_000_000)
    return p


def complete_params(options: dict):
    """CompleteParams from the completion keys of `options` (None values: defaults)."""
    from .complete.pipeline import CompleteParams

    _unknown(options, COMPLETE_KEYS, "completion")
    p = CompleteParams()
    if options.get("finetune_iterations") is not None:
        p.finetune.iterations = whole("finetune_iterations", options["finetune_iterations"], 0, 100_000)
    if options.get("resolution") is not None:
        p.shape.resolution = whole("resolution", options["resolution"], 8, 512)
    if options.get("diffusion_steps") is not None:
        p.diffusion_steps = whole("diffusion_steps", options["diffusion_steps"], 1, 1000)
    if options.get("mesh_resolution") is not None:
        p.mesh.resolution = whole("mesh_resolution", options["mesh_resolution"], 8, 512)
    return p


def instances(value) -> list[int] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not value:
        raise OptionError("instances", f"must be a non-empty list of instance ids, got {value!r}")
    # ids as the run folder names them: integers, or their text (the add-on sends "3")
    return [whole("instances", int(v) if isinstance(v, str) and v.strip().isdigit() else v, 0, 10**9) for v in value]


def split(kind: str, options: dict) -> dict:
    """Every option of a segment / complete / run job, checked: {"segment": SegmentParams,
    "complete": CompleteParams, "device", "weights", "sam_weights", "generator", "instances"};
    "sam_weights" is a SAM ONNX model folder (segment and run; default: the installed model)."""
    options = dict(options or {})
    out = {"device": device(options.pop("device", None) or "auto")}
    if kind == "segment":
        out["sam_weights"] = folder("sam_weights", options.pop("sam_weights", None))
        out["segment"] = segment_params(options)
        return out
    from .complete.pipeline import GENERATORS

    out["instances"] = instances(options.pop("instances", None))
    out["generator"] = choice("generator", options.pop("generator", None) or "auto", GENERATORS)
    out["weights"] = folder("weights", options.pop("weights", None))
    if kind == "run":
        out["sam_weights"] = folder("sam_weights", options.pop("sam_weights", None))
        out["segment"] = segment_params({k: options.pop(k) for k in list(options) if k in SEGMENT_KEYS})
    out["complete"] = complete_params(options)
    return out
