"""`instascene info PATH [--json]`: summarise a scene folder or a Gaussian PLY, or say what is wrong."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np

from ..io.scene import Scene, load_scene

_NUMBERED = re.compile(r"(.*?)(\d+)$")

_LAYOUT_NAMES = {
    "ply": "Gaussian PLY file",
    "instascene": "InstaScene data folder",
    "training": "2DGS/3DGS training output",
    "nerf-synthetic": "NeRF-synthetic folder",
}
_SOURCE_NAMES = {"colmap": "COLMAP", "cameras.json": "cameras.json", "transforms.json": "NeRF-synthetic transforms"}


def add_parser(sub) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "info",
        help="summarise a scene folder or a Gaussian PLY",
        description="Summarise a scene folder (InstaScene data folder, 2DGS/3DGS training output, "
        "NeRF-synthetic folder) or a Gaussian PLY file, or say clearly what is wrong with it.",
    )
    parser.add_argument("path", metavar="PATH", help="scene folder or .ply file")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(func=run)
    return parser


def run(args) -> int:
    scene = load_scene(args.path)
    summary = summarize(scene)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(format_summary(summary))
    return 0


# ---------------------------------------------------------------------- summary


def group_extras(names: list[str]) -> dict[str, int]:
    """{'segfeat_0'..'segfeat_15', 'foo'} -> {'segfeat_0..15': 16, 'foo': 1}, in file order.

    A run of names sharing a prefix and numbered 0..n-1 becomes one 'prefix0..n-1' entry.
    """
    groups: dict[str, list] = {}
    for name in names:
        m = _NUMBERED.match(name)
        key = m.group(1) if m and m.group(1) else name
        groups.setdefault(key, []).append((name, int(m.group(2)) if m and m.group(1) else None))
    out: dict[str, int] = {}
    for prefix, items in groups.items():
        idx = [i for _, i in items]
        if len(items) > 1 and None not in idx and sorted(idx) == list(range(len(idx))):
            out[f"{prefix}0..{len(idx) - 1}"] = len(idx)
        else:
            for name, _ in items:
                out[name] = 1
    return out


def summarize(scene: Scene) -> dict:
    """Everything `info` shows, as plain JSON-ready values."""
    root = scene.root

    def rel(p: Path | None) -> str | None:
        if p is None:
            return None
        try:
            return p.relative_to(root).as_posix() or "."
        except ValueError:
            return str(p)

    out: dict = {
        "path": str(scene.ply_path if scene.layout == "ply" else root),
        "layout": scene.layout,
        "layout_name": _LAYOUT_NAMES.get(scene.layout, scene.layout),
        "ply": rel(scene.ply_path),
    }

    s = scene.splats
    if s is None:
        out["splats"] = None
    else:
        lo, hi = s.bounds()
        # InstaScene's save_ply_as_3dgs writes 2DGS with a third scale ln(1e-6) (formats.md §1)
        flattened = s.kind == "3dgs" and len(s) > 0 and bool(np.all(s.log_scales[:, 2] < np.log(1e-5)))
        out["splats"] = {
            "kind": s.kind,
            "layout": s.kind.upper(),  # '2DGS' or '3DGS'
            "flattened_2dgs": flattened,
            "count": len(s),
            "sh_degree": s.sh_degree,
            "extra_properties": group_extras(list(s.extra)),
            "bounds": {
                "min": [float(v) for v in lo],
                "max": [float(v) for v in hi],
                "size": [float(v) for v in np.asarray(hi, dtype=np.float64) - lo],
            },
        }

    sizes: dict[tuple[int, int], int] = {}
    for cam in scene.cameras:
        sizes[(cam.width, cam.height)] = sizes.get((cam.width, cam.height), 0) + 1
    out["cameras"] = {
        "count": len(scene.cameras),
        "source": scene.camera_source,
        "path": rel(scene.camera_path),
        "resolutions": [
            {"width": w, "height": h, "count": n}
            for (w, h), n in sorted(sizes.items(), key=lambda kv: (-kv[1], kv[0]))
        ],
    }

    folders = sorted({rel(p.parent) for p in scene.image_paths.values()})
    out["images"] = {"count": len(scene.image_paths), "folders": folders}

    max_label = None
    if scene.mask_paths:
        max_label = max(int(scene.mask(name).max(initial=0)) for name in scene.mask_paths)
    out["masks"] = {"count": len(scene.mask_paths), "max_label": max_label}
    out["ground_truth"] = scene.has_gt
    return out


def _vec(v) -> str:
    return "(" + ", ".join(f"{x:.4g}" for x in v) + ")"


def format_summary(d: dict) -> str:
    lines = [f"{d['path']}: {d['layout_name']}"]
    s = d["splats"]
    if s is None:
        lines.append("  gaussians:    none (no point_cloud.ply)" if d["ply"] is None else f"  splats:       {d['ply']} (not loaded)")
    else:
        if d["layout"] != "ply":
            lines.append(f"  splats:       {d['ply']}")
        flat = " (a flattened 2DGS export: third scale ~1e-6)" if s["flattened_2dgs"] else ""
        lines.append(f"  layout:       {s['layout']}{flat}")
        lines.append(f"  gaussians:    {s['count']}")
        lines.append(f"  SH degree:    {s['sh_degree']}")
        extras = ", ".join(f"{k} ({n})" if n > 1 else k for k, n in s["extra_properties"].items())
        lines.append(f"  extra props:  {extras or 'none'}")
        b = s["bounds"]
        lines.append(f"  bounds:       min {_vec(b['min'])}  max {_vec(b['max'])}  size {_vec(b['size'])}")
    if d["layout"] == "ply":
        return "\n".join(lines)

    c = d["cameras"]
    if c["count"]:
        res = ", ".join(
            f"{r['width']}x{r['height']}" + (f" ({r['count']})" if len(c["resolutions"]) > 1 else "")
            for r in c["resolutions"]
        )
        src = _SOURCE_NAMES.get(c["source"], c["source"])
        where = f" ({c['path']})" if c["path"] and c["path"] != src else ""
        lines.append(f"  cameras:      {c['count']} from {src}{where}, {res}")
    else:
        lines.append("  cameras:      none")
    im = d["images"]
    lines.append(f"  images:       {im['count']}" + (f" in {', '.join(f + '/' for f in im['folders'])}" if im["count"] else ""))
    m = d["masks"]
    lines.append(f"  masks:        {m['count']}" + (f" (max label {m['max_label']})" if m["count"] else ""))
    lines.append(f"  ground truth: {'yes (gt/)' if d['ground_truth'] else 'no'}")
    return "\n".join(lines)
