"""The job runners that exist today (see jobs.py for the runner interface).

validate  load the scene the way every later stage will, and write its summary:
          a cheap way for a client to learn, before a long job, whether its input is good.
render    render every camera of the scene with the 2DGS rasterizer: a visible check of
          the splats and cameras, and the service's first GPU-sized job.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import numpy as np

from ..errors import InstaSceneError
from ..io.atomic import atomic_write
from ..io.scene import load_scene

log = logging.getLogger(__name__)

SUMMARY_FILE = "scene_summary.json"
RENDERS_DIR = "renders"


def _check_options(kind: str, options: dict, known: tuple[str, ...]) -> None:
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise InstaSceneError(
            f"unknown {kind} option {unknown[0]!r}; known options: {', '.join(known) or 'none'}"
        )


def validate(scene: Path, run: Path, options: dict, progress) -> dict:
    """RUN/scene_summary.json: layout, counts (Gaussians, cameras, images, masks), bounds."""
    from ..cli.info import summarize  # the same summary `instascene info --json` prints

    check_validate_options(options)
    progress(0.0, "load", f"loading {scene}")
    loaded = load_scene(scene)
    progress(0.7, "summarize", "summarising the scene")
    summary = summarize(loaded)
    with atomic_write(run / SUMMARY_FILE, "w") as f:
        json.dump(summary, f, indent=2)
    splats = summary["splats"]
    progress(1.0, "write", f"wrote {SUMMARY_FILE}")
    return {
        "summary": SUMMARY_FILE,
        "layout": summary["layout"],
        "gaussians": splats["count"] if splats else 0,
        "cameras": summary["cameras"]["count"],
    }


def _background(value) -> list[float]:
    named = {"black": [0.0, 0.0, 0.0], "white": [1.0, 1.0, 1.0]}
    if isinstance(value, str) and value in named:
        return named[value]
    if (
        isinstance(value, list)
        and len(value) == 3
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1 for v in value)
    ):
        return [float(v) for v in value]
    raise InstaSceneError(f"render option 'background' must be 'black', 'white' or [r, g, b] in 0..1, not {value!r}")


def _device(value) -> str:
    import torch

    from ..options import device

    value = device(value)
    return ("cuda" if torch.cuda.is_available() else "cpu") if value == "auto" else value


def check_validate_options(options: dict) -> None:
    _check_options("validate", options, ())


def check_render_options(options: dict) -> dict:
    """The render options, checked: device, background, scale, cameras (names)."""
    _check_options("render", options, ("device", "background", "scale", "cameras"))
    scale = options.get("scale", 1.0)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 < scale <= 4:
        raise InstaSceneError(f"render option 'scale' must be a number in (0, 4], not {scale!r}")
    wanted = options.get("cameras")
    if wanted is not None and (not isinstance(wanted, list) or not all(isinstance(n, str) for n in wanted)):
        raise InstaSceneError("render option 'cameras' must be a list of camera names")
    return {"device": _device(options.get("device", "auto")), "background": _background(options.get("background", "black")),
            "scale": scale, "cameras": wanted}


def _file_stem(name: str) -> str:
    """A camera name as a path under renders/ (names may hold sub-folders, never escape)."""
    parts = [p for p in Path(name).parts if p not in ("", ".", "..", "/")]
    return "/".join(parts) or "view"


def render(scene: Path, run: Path, options: dict, progress) -> dict:
    """RUN/renders/<camera>.png for every camera (or options.cameras), each written whole.

    Options: device ('auto'|'cpu'|'cuda'), background ('black'|'white'|[r,g,b]),
    scale (resolution factor, 0 < scale <= 4), cameras (a list of camera names).
    """
    o = check_render_options(options)
    import torch
    from PIL import Image

    from ..render import Gaussians, View, rasterize

    device, background, scale, wanted = o["device"], o["background"], o["scale"], o["cameras"]
    progress(0.0, "load", f"loading {scene}")
    loaded = load_scene(scene)
    splats = loaded.require_splats()
    cameras = loaded.require_cameras()
    if wanted is not None:
        cameras = [loaded.camera(name) for name in wanted]

    g = Gaussians.from_splats(splats, device=device)
    bg = torch.tensor(background, device=device)
    out_dir = run / RENDERS_DIR
    n = len(cameras)
    log.info("rendering %d views of %d Gaussians on %s", n, len(g), device)
    written = []
    for i, cam in enumerate(cameras):
        progress(i / n, "render", f"view {cam.name} ({i + 1}/{n})")
        if scale != 1:
            cam = cam.resized(max(1, round(cam.width * scale)), max(1, round(cam.height * scale)))
        with torch.no_grad():
            out = rasterize(g, View.from_camera(cam, device=device), background=bg)
        rgb = (out.rgb.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(rgb)).save(buf, format="PNG")
        rel = f"{RENDERS_DIR}/{_file_stem(cam.name)}.png"
        with atomic_write(run / rel) as f:
            f.write(buf.getvalue())
        written.append(rel)
    progress(1.0, "render", f"{n} views written to {RENDERS_DIR}/")
    return {"renders": written, "device": device}
