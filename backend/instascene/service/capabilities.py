"""What this backend can do, for a client deciding what to offer: device, versions,
generator weights, job kinds. Versions come from package metadata, so asking does not
import gsplat (slow, and it may try to build its CUDA extension)."""

from __future__ import annotations

import functools
import platform
import sys
from importlib import metadata
from pathlib import Path

from .. import __version__
from . import jobs

# A diffusers pipeline folder has model_index.json at its top; the completion issue
# may refine what "complete" means for its generator's weights.
WEIGHT_FILES = ("model_index.json",)


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=1)
def device_info() -> dict:
    """CPU or CUDA, and the GPU's name and memory (fixed for the server's lifetime)."""
    import torch

    from ..render import gsplat_backend

    info = {"type": "cpu", "cuda_available": torch.cuda.is_available(), "cuda_version": torch.version.cuda,
            "gpu": None, "gsplat_kernels": False, "gsplat_status": None}
    if info["cuda_available"]:
        props = torch.cuda.get_device_properties(0)
        info["type"] = "cuda"
        info["gpu"] = {
            "name": props.name,
            "memory_total_bytes": int(props.total_memory),
            "capability": f"{props.major}.{props.minor}",
            "count": torch.cuda.device_count(),
        }
        info["gsplat_kernels"] = gsplat_backend.available()
    info["gsplat_status"] = gsplat_backend.why_unavailable()
    return info


def weights_status(path: Path | None, source: str | None) -> dict:
    """Generator weights: configured (by --weights or INSTASCENE_WEIGHTS), found, or what is missing."""
    if path is None:
        return {"configured": False, "found": False, "path": None, "source": None, "missing": [],
                "message": "no generator weights configured (--weights DIR or INSTASCENE_WEIGHTS); "
                           "completion uses the geometric generator"}
    base = {"configured": True, "path": str(path), "source": source}
    if not path.is_dir():
        return {**base, "found": False, "missing": [str(path)], "message": f"weights folder not found: {path}"}
    missing = [name for name in WEIGHT_FILES if not (path / name).exists()]
    if missing:
        return {**base, "found": False, "missing": missing,
                "message": f"weights folder {path} is incomplete: missing {', '.join(missing)}"}
    return {**base, "found": True, "missing": [], "message": f"weights found in {path}"}


def capabilities(weights: Path | None, weights_source: str | None, roots: list[Path], limits: dict) -> dict:
    return {
        "service": "instascene",
        "version": __version__,
        "versions": {
            "instascene": __version__,
            "python": platform.python_version(),
            "torch": _version("torch"),
            "gsplat": _version("gsplat"),
            "fastapi": _version("fastapi"),
        },
        "device": device_info(),
        "weights": weights_status(weights, weights_source),
        "jobs": {
            "kinds": jobs.available(),
            "unavailable": {k: jobs.unavailable_message(k) for k in jobs.KINDS if k not in jobs.RUNNERS},
            "concurrency": 1,
        },
        "data_roots": [str(r) for r in roots],
        "limits": limits,
        "platform": sys.platform,
    }
