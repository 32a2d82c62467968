"""The demo's Blender half: materialize a segmented + completed run into a .blend and render
a before/after picture. Headless (the `bpy` module or `blender --background`), e.g.::

    python -m instascene_blender.demo SCENE RUN OUT.blend OUT.png [--samples 16] [--size 480x360]

prints one JSON object on stdout (what `build_demo` returns); a bad input ends as one line
on stderr and exit status 2.

What it builds, from an empty factory scene:
- the scene's cameras (io/cameras.find_scene + blender/cameras.create_cameras; the
  whole-scene splats are not imported: the run's pieces replace them),
- `bpy.ops.instascene.materialize`: one object `instance_<id>` per instance and the
  `background` splats (blender/materialize.py),
- a sun + grey world, Cycles on the CPU, and a camera `demo_camera` that looks at the
  objects from the direction of one of the scene's real cameras and frames both layouts;
- the .blend (original layout), saved under a temporary name and renamed.

Then two renders with that camera: "before" (the layout as captured) and "after" (each
instance moved away from the instances' common centroid along the support plane by
`spread` x its distance, and turned 180° about the up axis, so the sides that faced
the other objects, the ones completion had to invent, face the camera). The picture is
the two side by side, before | after, `2*width` x `height`, split by a thin white line;
it is written as an 8-bit RGB PNG (zlib + struct), atomically.

What renders: the completed *meshes* (vertex colours, Principled BSDF, lit by the sun and
the world) for instances that have a `mesh.ply`; their completed splats stay in the .blend
as children (shown in the viewport, hidden in renders). Lit surfaces show the invented
backs as solid shapes, where emissive splat discs would show the colour the fine-tune
gave them but hardly the shape, and a mesh renders several times faster on the CPU.
Instances without a mesh (not completed) and the background (the table) render as
splats (oriented emissive discs, the geometry-nodes setup of blender/nodes.py).

Imports only bpy, numpy and the standard library (bpy lazily: `--help` works anywhere).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import struct
import sys
import tempfile
import time
import zlib

import numpy as np

from .io.atomic import atomic_write
from .io.cameras import find_scene
from .io.run_folder import read_run_folder

DEMO_CAMERA = "demo_camera"
SUN = "demo_sun"
WORLD = "InstaScene Demo World"
DIVIDER = 2  # white columns between the two halves (drawn over their inner edges)
ELEVATION_RANGE = (20.0, 60.0)  # degrees above the support plane for the demo camera
MARGIN = 0.88  # share of the half field of view the framed objects may fill


class DemoError(ValueError):
    """A demo input or output that cannot be used; the message says which and why."""


# ---------------------------------------------------------------------- PNG (stdlib)
def write_png(path, rgb: np.ndarray) -> None:
    """8-bit RGB PNG, top row first, written whole-or-nothing."""
    rgb = np.ascontiguousarray(rgb, np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an H x W x 3 image, got {rgb.shape}")
    h, w, _ = rgb.shape
    raw = np.empty((h, 1 + 3 * w), np.uint8)
    raw[:, 0] = 0  # filter type None on every row
    raw[:, 1:] = rgb.reshape(h, 3 * w)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + \
        chunk(b"IDAT", zlib.compress(raw.tobytes(), 6)) + chunk(b"IEND", b"")
    with atomic_write(path) as f:
        f.write(png)


def compose(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """before | after (H x W x 3 uint8 each) -> H x 2W x 3, a white divider on the seam."""
    if before.shape != after.shape:
        raise ValueError(f"the two renders differ in size: {before.shape} vs {after.shape}")
    pic = np.concatenate([before, after], axis=1)
    w = before.shape[1]
    half = DIVIDER // 2
    pic[:, max(0, w - half):w + DIVIDER - half] = 255
    return pic


# ---------------------------------------------------------------------- geometry helpers
def _unit(v) -> np.ndarray:
    v = np.asarray(v, np.float64)
    n = float(np.linalg.norm(v))
    return v / n if n > 1e-12 else v


def up_axis(camera_objects) -> np.ndarray:
    """The scene's up direction: the mean of the cameras' up vectors (their local +Y), snapped
    to the nearest world axis when within 15°; +Z without cameras."""
    ups = [np.asarray(o.matrix_world.to_3x3().col[1], np.float64) for o in camera_objects]
    up = _unit(np.mean(ups, axis=0)) if ups else np.zeros(3)
    if np.linalg.norm(up) < 0.5:
        return np.array([0.0, 0.0, 1.0])
    axis = int(np.argmax(np.abs(up)))
    if abs(up[axis]) >= math.cos(math.radians(15.0)):
        snapped = np.zeros(3)
        snapped[axis] = math.copysign(1.0, up[axis])
        return snapped
    return up


def spread_offsets(locations: np.ndarray, up: np.ndarray, spread: float) -> np.ndarray:
    """Per object, the move away from the common centroid in the support plane: spread x the
    in-plane offset of the object from the centroid."""
    loc = np.asarray(locations, np.float64).reshape(-1, 3)
    if not len(loc):
        return loc
    d = loc - loc.mean(axis=0)
    d -= np.outer(d @ up, up)
    return spread * d


def _view_direction(camera_objects, target: np.ndarray, up: np.ndarray) -> tuple[np.ndarray, str | None]:
    """Unit vector from the target towards the demo camera: the direction of the real camera
    whose elevation above the plane is nearest 35° (clamped to ELEVATION_RANGE)."""
    best, best_name, best_cost = None, None, float("inf")
    for o in camera_objects:
        d = np.asarray(o.matrix_world.translation, np.float64) - target
        if np.linalg.norm(d) < 1e-9:
            continue
        d = _unit(d)
        elev = math.degrees(math.asin(max(-1.0, min(1.0, float(d @ up)))))
        cost = abs(elev - 35.0)
        if cost < best_cost:
            best, best_name, best_cost = d, o.name, cost
    if best is None:  # no camera: look from the -Y side (Blender's front view), tilted down
        side = np.array([0.0, -1.0, 0.0]) if abs(up[1]) < 0.9 else np.array([0.0, 0.0, 1.0])
        best = side - up * float(side @ up)
    horiz = best - up * float(best @ up)
    if np.linalg.norm(horiz) < 1e-6:  # straight above: pick any horizontal direction
        horiz = np.cross(up, [1.0, 0.0, 0.0] if abs(up[0]) < 0.9 else [0.0, 1.0, 0.0])
    horiz = _unit(horiz)
    elev = math.degrees(math.asin(max(-1.0, min(1.0, float(best @ up)))))
    elev = math.radians(min(max(elev, ELEVATION_RANGE[0]), ELEVATION_RANGE[1]))
    return _unit(horiz * math.cos(elev) + up * math.sin(elev)), best_name


def _camera_basis(view_dir: np.ndarray, up: np.ndarray) -> np.ndarray:
    """Columns: camera right, camera up, camera back (+Z); the camera looks along -view_dir."""
    back = _unit(view_dir)
    right = np.cross(up, back)
    if np.linalg.norm(right) < 1e-6:
        right = np.cross([1.0, 0.0, 0.0], back)
    right = _unit(right)
    cam_up = np.cross(back, right)
    return np.stack([right, cam_up, back], axis=1)


def frame_points(points: np.ndarray, view_dir: np.ndarray, up: np.ndarray, tan_x: float, tan_y: float,
                 margin: float = MARGIN) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """A camera looking along -view_dir that shows every point within `margin` of its frame:
    (position, 3x3 rotation, (shift_x, shift_y) in Blender's lens-shift units for a
    horizontal sensor fit). The distance is the smallest that fits the points' projected
    spans; the lens shift then centres them (under perspective a tilted camera does not
    see the middle of a box in the middle of its frame)."""
    pts = np.asarray(points, np.float64).reshape(-1, 3)
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    target = 0.5 * (lo + hi)
    rot = _camera_basis(view_dir, up)
    local = (pts - target) @ rot  # x right, y up, z towards the camera (camera on the target)
    radius = max(float(np.linalg.norm(hi - lo)) * 0.5, 1e-4)

    def spans(dist):
        depth = dist - local[:, 2]
        u, v = local[:, 0] / depth, local[:, 1] / depth
        return u, v

    def fits(dist):
        u, v = spans(dist)
        return np.ptp(u) <= 2.0 * tan_x * margin and np.ptp(v) <= 2.0 * tan_y * margin

    near = radius * 1.05  # every point in front of the camera
    far = near
    while not fits(far) and far < near * 1e6:
        far *= 2.0
    if fits(near):
        far = near
    else:
        for _ in range(50):
            mid = 0.5 * (near + far)
            near, far = (near, mid) if fits(mid) else (mid, far)
    u, v = spans(far)
    shift = (0.5 * (u.min() + u.max()) / (2.0 * tan_x), 0.5 * (v.min() + v.max()) / (2.0 * tan_x))
    return target + rot[:, 2] * far, rot, (float(shift[0]), float(shift[1]))


# ---------------------------------------------------------------------- Blender side
def _ensure_registered() -> bool:
    import bpy

    if "materialize" in dir(bpy.ops.instascene):
        return False
    from . import register

    register()
    return True


def _setup_world_and_light(scene, view_dir: np.ndarray, up: np.ndarray, size: float) -> None:
    import bpy
    from mathutils import Matrix

    world = bpy.data.worlds.get(WORLD) or bpy.data.worlds.new(WORLD)
    if bpy.app.version < (5, 0, 0):
        world.use_nodes = True
    bg = next((n for n in world.node_tree.nodes if n.type == "BACKGROUND"), None)
    if bg is None:
        bg = world.node_tree.nodes.new("ShaderNodeBackground")
        out = next((n for n in world.node_tree.nodes if n.type == "OUTPUT_WORLD"), None) or \
            world.node_tree.nodes.new("ShaderNodeOutputWorld")
        world.node_tree.links.new(bg.outputs[0], out.inputs["Surface"])
    bg.inputs["Color"].default_value = (0.62, 0.64, 0.68, 1.0)
    bg.inputs["Strength"].default_value = 0.55
    scene.world = world

    light = bpy.data.lights.new(SUN, "SUN")
    light.energy = 2.4
    light.angle = math.radians(8.0)
    sun = bpy.data.objects.new(SUN, light)
    scene.collection.objects.link(sun)
    # light from above, from the camera's side and a little to its left
    right = _camera_basis(view_dir, up)[:, 0]
    towards_light = _unit(up * 1.6 + view_dir * 0.9 - right * 0.6)
    rot = _camera_basis(towards_light, up if abs(float(towards_light @ up)) < 0.99 else np.cross(up, right))
    m = np.eye(4)
    m[:3, :3] = rot  # the lamp's -Z (its light direction) points away from towards_light
    m[:3, 3] = np.asarray(view_dir) * size
    sun.matrix_world = Matrix(m.tolist())


def _setup_render(scene, size, samples: int) -> None:
    from .blender.importer import raise_transparent_bounces, use_standard_view

    r = scene.render
    r.engine = "CYCLES"
    r.resolution_x, r.resolution_y = int(size[0]), int(size[1])
    r.resolution_percentage = 100
    r.pixel_aspect_x = r.pixel_aspect_y = 1.0
    r.film_transparent = False
    r.image_settings.file_format = "PNG"
    r.image_settings.color_mode = "RGB"
    r.image_settings.color_depth = "8"
    c = scene.cycles
    c.device = "CPU"
    c.samples = max(1, int(samples))
    c.use_adaptive_sampling = False
    for name, value in (("max_bounces", 4), ("diffuse_bounces", 2), ("glossy_bounces", 1),
                        ("transmission_bounces", 0), ("volume_bounces", 0), ("caustics_reflective", False),
                        ("caustics_refractive", False)):
        if hasattr(c, name):
            setattr(c, name, value)
    c.use_denoising = c.samples >= 4
    raise_transparent_bounces(scene)
    use_standard_view(scene)


def _render(scene, path: str) -> tuple[np.ndarray, float]:
    """Render the scene camera to `path` (PNG) and return (H x W x 3 uint8 top row first, seconds)."""
    import bpy

    scene.render.filepath = path
    t0 = time.perf_counter()
    bpy.ops.render.render(write_still=True)
    seconds = time.perf_counter() - t0
    if not os.path.isfile(path):
        raise DemoError(f"Cycles wrote no image to {path}")
    img = bpy.data.images.load(path, check_existing=False)
    try:
        w, h = img.size
        px = np.empty(w * h * img.channels, np.float32)
        img.pixels.foreach_get(px)
        px = px.reshape(h, w, img.channels)[::-1, :, :3]  # Blender's rows start at the bottom
    finally:
        bpy.data.images.remove(img)
    return np.clip(np.round(px * 255.0), 0, 255).astype(np.uint8), seconds


def _instance_points(objects) -> np.ndarray:
    """World-space bounding-box corners of the objects (the evaluated geometry where there is one)."""
    pts = []
    for obj in objects:
        m = np.asarray(obj.matrix_world, np.float64)
        corners = np.asarray([tuple(c) for c in obj.bound_box], np.float64)
        pts.append(corners @ m[:3, :3].T + m[:3, 3])
    return np.concatenate(pts, axis=0) if pts else np.zeros((0, 3))


def _after_matrices(objects, up: np.ndarray, spread: float) -> list[np.ndarray]:
    """The 'after' world matrix of each object: moved by spread_offsets, turned 180° about the
    up axis through its own origin."""
    locs = np.asarray([tuple(o.matrix_world.translation) for o in objects], np.float64).reshape(-1, 3)
    moves = spread_offsets(locs, up, spread)
    turn = 2.0 * np.outer(up, up) - np.eye(3)  # rotation by 180° about `up`
    out = []
    for obj, loc, move in zip(objects, locs, moves):
        m = np.asarray(obj.matrix_world, np.float64).copy()
        m[:3, :3] = turn @ m[:3, :3]
        m[:3, 3] = loc + move  # turning about the origin keeps it in place
        out.append(m)
    return out


def _save_blend(path: str) -> None:
    import bpy

    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp.blend", dir=folder)
    os.close(fd)
    try:
        bpy.ops.wm.save_as_mainfile(filepath=tmp, check_existing=False, copy=True, compress=True)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp + "1")  # a backup Blender may have made of the empty placeholder


def _check_inputs(scene_dir, run_dir, blend_path, picture_path, samples, size, spread):
    if not os.path.isdir(scene_dir):
        raise DemoError(f"{scene_dir}: scene folder not found")
    if not (isinstance(size, (tuple, list)) and len(size) == 2 and all(int(v) >= 4 for v in size)):
        raise DemoError(f"size must be (width, height) of at least 4 pixels each, got {size!r}")
    if int(samples) < 1:
        raise DemoError(f"samples must be at least 1, got {samples}")
    if not (math.isfinite(spread) and spread >= 0):
        raise DemoError(f"spread must be a number >= 0, got {spread}")
    for p, what in ((blend_path, ".blend"), (picture_path, "picture")):
        if not p or os.path.isdir(p):
            raise DemoError(f"{p or '(empty)'}: not a file path for the {what}")
    sp = find_scene(scene_dir)  # SceneError when it is no scene
    run = read_run_folder(run_dir)  # SceneError when it is no run folder
    if not run.instances:
        raise DemoError(f"{run.root}: the run has no instances")
    return sp, run


def build_demo(scene_dir, run_dir, blend_path, picture_path, *, samples: int = 16, size=(480, 360),
               spread: float = 1.6) -> dict:
    """Materialize `run_dir` over the cameras of `scene_dir`, save `blend_path`, render the
    before/after picture to `picture_path`; returns what was built and how long it took.

    Raises DemoError / SceneError / PlyError (all ValueError) for inputs it cannot use, and
    RuntimeError when a Blender operator fails (its report is the message).
    """
    t_start = time.perf_counter()
    scene_dir, run_dir = os.path.abspath(os.fspath(scene_dir)), os.path.abspath(os.fspath(run_dir))
    blend_path, picture_path = os.path.abspath(os.fspath(blend_path)), os.path.abspath(os.fspath(picture_path))
    sp, run = _check_inputs(scene_dir, run_dir, blend_path, picture_path, samples, size, float(spread))

    import bpy
    from mathutils import Matrix

    from .blender.cameras import create_cameras
    from .blender.importer import new_collection
    from .blender.materialize import find_run_collection

    bpy.ops.wm.read_factory_settings(use_empty=True)
    registered = _ensure_registered()
    scene = bpy.context.scene

    cam_coll = new_collection(f"{sp.name}_cameras", scene.collection)
    cam_coll["instascene_scene"] = sp.root
    cameras = create_cameras(sp.cameras, cam_coll) if sp.cameras else []

    bpy.ops.instascene.materialize(run_dir=run.root, mesh_in_render=True)
    coll = find_run_collection(run.root)
    instances = {o["instascene_instance"]: o for o in coll.all_objects
                 if "instascene_instance" in o and o.parent is None}
    background = [o for o in coll.all_objects if o.get("instascene_background")]
    meshes = 0
    for obj in instances.values():
        if obj.type == "MESH" and not obj.get("instascene_splats"):
            obj.hide_render = False
            meshes += 1
            for child in obj.children:  # its splats: in the viewport, not in renders
                child.hide_render = True
    order = sorted(instances, key=lambda k: (len(k), k))
    objs = [instances[k] for k in order]

    # camera and light, framing both layouts
    bpy.context.view_layer.update()
    up = up_axis(cameras)
    before_pts = _instance_points(objs)
    after = _after_matrices(objs, up, float(spread))
    local_corners = [np.asarray([tuple(c) for c in o.bound_box], np.float64) for o in objs]
    after_pts = np.concatenate([c @ m[:3, :3].T + m[:3, 3] for c, m in zip(local_corners, after)], axis=0)
    all_pts = np.concatenate([before_pts, after_pts], axis=0)
    centroid = np.asarray([tuple(o.matrix_world.translation) for o in objs]).mean(axis=0)
    view_dir, from_camera = _view_direction(cameras, centroid, up)
    cam_data = bpy.data.cameras.new(DEMO_CAMERA)
    cam_data.lens, cam_data.sensor_width, cam_data.sensor_fit = 32.0, 36.0, "HORIZONTAL"
    w, h = int(size[0]), int(size[1])
    tan_x = cam_data.sensor_width / (2.0 * cam_data.lens)
    tan_y = tan_x * h / w
    pos, rot, (cam_data.shift_x, cam_data.shift_y) = frame_points(all_pts, view_dir, up, tan_x, tan_y)
    extent = float(np.linalg.norm(all_pts.max(0) - all_pts.min(0)))
    dist = float(np.linalg.norm(pos - all_pts.mean(0)))
    cam_data.clip_start, cam_data.clip_end = max(1e-4, dist * 1e-3), max(100.0, dist * 100.0)
    cam = bpy.data.objects.new(DEMO_CAMERA, cam_data)
    m = np.eye(4)
    m[:3, :3], m[:3, 3] = rot, pos
    cam.matrix_world = Matrix(m.tolist())
    cam["instascene_demo"] = 1
    scene.collection.objects.link(cam)
    scene.camera = cam
    _setup_world_and_light(scene, view_dir, up, extent)
    _setup_render(scene, (w, h), samples)

    _save_blend(blend_path)

    before_mats = [np.asarray(o.matrix_world, np.float64).copy() for o in objs]
    with tempfile.TemporaryDirectory(prefix="instascene-demo-") as tmp:
        img_before, t_before = _render(scene, os.path.join(tmp, "before.png"))
        for obj, mat in zip(objs, after):
            obj.matrix_world = Matrix(mat.tolist())
        bpy.context.view_layer.update()
        img_after, t_after = _render(scene, os.path.join(tmp, "after.png"))
    for obj, mat in zip(objs, before_mats):  # leave the session in the saved layout
        obj.matrix_world = Matrix(mat.tolist())
    picture = compose(img_before, img_after)
    write_png(picture_path, picture)

    return {
        "blend": blend_path,
        "picture": picture_path,
        "picture_size": [int(picture.shape[1]), int(picture.shape[0])],
        "objects": len(instances) + len(background),
        "instances": [instances[k].name for k in order],
        "meshes": meshes,
        "background": background[0].name if background else None,
        "cameras": len(cameras) + 1,
        "camera": DEMO_CAMERA,
        "view_from": from_camera,
        "up": [float(v) for v in up],
        "spread": float(spread),
        "samples": int(scene.cycles.samples),
        "render_seconds": {"before": round(t_before, 3), "after": round(t_after, 3),
                           "total": round(t_before + t_after, 3)},
        "seconds": round(time.perf_counter() - t_start, 3),
        "registered_addon": registered,
    }


# ---------------------------------------------------------------------- command line
def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, e.g. 480x360, got {text!r}") from None
    if w < 4 or h < 4:
        raise argparse.ArgumentTypeError(f"each side must be at least 4 pixels, got {text!r}")
    return w, h


@contextlib.contextmanager
def _stdout_to_stderr():
    """Blender prints render progress and save messages on stdout: keep stdout for the JSON."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m instascene_blender.demo",
                                description="Materialize a run into a .blend and render a before/after "
                                            "picture (Cycles, CPU).")
    p.add_argument("scene", metavar="SCENE", help="the scene folder (its cameras are used)")
    p.add_argument("run", metavar="RUN", help="the run folder written by segment/complete")
    p.add_argument("blend", metavar="BLEND", help=".blend file to write")
    p.add_argument("picture", metavar="PNG", help="before | after picture to write")
    p.add_argument("--samples", type=int, default=16, help="Cycles samples per pixel (default 16)")
    p.add_argument("--size", type=_size, default=(480, 360), help="size of each half, WxH (default 480x360)")
    p.add_argument("--spread", type=float, default=1.6,
                   help="'after' layout: move each object away from the centroid by SPREAD x its distance")
    args = p.parse_args(argv)
    try:
        with _stdout_to_stderr():
            res = build_demo(args.scene, args.run, args.blend, args.picture, samples=args.samples,
                             size=args.size, spread=args.spread)
    except (ValueError, OSError, RuntimeError) as e:  # PlyError/SceneError/DemoError are ValueErrors
        msg = " ".join(str(e).split()) or type(e).__name__
        print(f"{p.prog}: error: {msg}", file=sys.stderr)
        return 2
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
