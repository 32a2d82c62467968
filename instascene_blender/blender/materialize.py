"""Materialize a run folder: one object per instance, the background, one collection per run.

Per instance `<id>` (records and files: io/run_folder.py):
- with `mesh.ply`: a mesh object `instance_<id>` (vertex colours, material) whose
  origin is the instance centroid, and its splats (`completed.ply`, else
  `observed.ply`) as the child `instance_<id>_splats` (so moving the mesh moves them);
- without a mesh: the splat object itself is `instance_<id>`, origin at the centroid.
The background becomes the splat object `background`: `background_completed.ply` (the
table closed under the objects, so moving one reveals table, not void) when the run has
it and `completed_background` is set, else `background.ply`. Everything goes into a
collection named after the run folder (or "<name> objects" when the imported scene took that
name), tagged with the run's path; materializing the same run again deletes that
collection's objects first, so it replaces, never duplicates — and, unless `keep_moves`
is off, puts each object where the artist had moved it.
The imported whole-scene splats of the segmented scene (instances.json "scene") are hidden
and tagged as superseded, so Export Layout does not write them twice.
"""

from __future__ import annotations

import os

import bpy

from ..io.mesh_ply import read_mesh_ply
from ..io.ply import read_splat_ply
from ..io.run_folder import instance_centroid, read_run_folder
from . import splats
from .importer import raise_transparent_bounces, viewport_points_for
from .meshes import create_mesh

RUN_PROP = "instascene_run"


def _remove_collection_tree(coll) -> None:
    for child in list(coll.children):
        _remove_collection_tree(child)
    for obj in list(coll.objects):
        data = obj.data
        bpy.data.objects.remove(obj, do_unlink=True)
        if data is not None and data.users == 0:
            if isinstance(data, bpy.types.Mesh):
                bpy.data.meshes.remove(data)
    bpy.data.collections.remove(coll)


SUPERSEDED_PROP = "instascene_superseded_by"


def _hide_source_scene(run, scene) -> list:
    """Hide the imported whole-scene splats the run was made from (its pieces replace them),
    and tag them so Export Layout does not write those splats twice."""
    if not run.scene:
        return []
    root = os.path.normpath(os.path.abspath(run.scene))
    hidden = []
    for obj in scene.objects:
        src = obj.get("instascene_source")
        if not splats.is_splat_object(obj) or not src or RUN_PROP in obj:
            continue
        src = os.path.normpath(os.path.abspath(src))
        if src == root or os.path.dirname(src) == root or src.startswith(root + os.sep):
            try:
                obj.hide_set(True)
            except RuntimeError:  # not in the active view layer
                pass
            obj.hide_render = True
            obj[SUPERSEDED_PROP] = run.root
            hidden.append(obj)
    return hidden


REST_PROP = "instascene_rest"  # where materialize put the object (its centroid; the background at 0)


def _artist_moves(coll) -> dict:
    """Per instance id (and "background"), how the artist moved the run's object since it
    was materialized: matrix_world @ rest⁻¹."""
    from mathutils import Matrix

    moves = {}
    for obj in coll.all_objects:
        key = obj.get("instascene_instance") if obj.parent is None else None
        key = "background" if obj.get("instascene_background") else key
        if key is None or REST_PROP not in obj:
            continue
        rest = Matrix.Translation([float(v) for v in obj[REST_PROP]])
        moves[str(key)] = obj.matrix_world @ rest.inverted()
    return moves


def find_run_collection(root: str):
    for coll in bpy.data.collections:
        if coll.get(RUN_PROP) == root:
            return coll
    return None


def materialize(run_dir: str, scene, display: str = "AUTO", point_threshold: int = 200_000,
                mesh_in_render: bool = False, completed_background: bool = True, keep_moves: bool = True) -> dict:
    run = read_run_folder(run_dir)
    bg_path = run.background if completed_background else (run.background_observed or run.background)
    bg_kind = "completed" if bg_path and bg_path != run.background_observed else "observed"
    # read everything first: a bad file leaves the previous result untouched
    loaded = []
    for rec in run.instances:
        data = read_splat_ply(rec.splat_file) if rec.splat_file else None
        mesh = read_mesh_ply(rec.files["mesh"]) if "mesh" in rec.files else None
        if data is None and mesh is None:
            continue
        loaded.append((rec, data, mesh))
    background = read_splat_ply(bg_path) if bg_path else None

    old = find_run_collection(run.root)
    moves = _artist_moves(old) if old is not None and keep_moves else {}
    if old is not None:
        _remove_collection_tree(old)
    name = run.name if run.name not in bpy.data.collections else f"{run.name} objects"
    coll = bpy.data.collections.new(name)  # not "synth0.001" beside the imported "synth0"
    scene.collection.children.link(coll)
    coll[RUN_PROP] = run.root

    objects, skipped = {}, [r.id for r in run.instances if r.id not in {x[0].id for x in loaded}]
    for rec, data, mesh in loaded:
        centroid = instance_centroid(rec, data.means if data is not None else mesh.vertices)
        name = f"instance_{rec.id}"
        if mesh is not None:
            me = create_mesh(name, mesh, origin=centroid)
            parent = bpy.data.objects.new(name, me)
            parent.location = tuple(float(v) for v in centroid)
            parent.hide_render = not mesh_in_render
            coll.objects.link(parent)
            if data is not None:
                vp, always = viewport_points_for(display, len(data), point_threshold)
                child = splats.create_splat_object(f"{name}_splats", data, coll, origin=centroid,
                                                   viewport_points=vp, always_points=always,
                                                   source=rec.splat_file)
                child.parent = parent
                child.location = (0.0, 0.0, 0.0)
                child[RUN_PROP], child["instascene_instance"] = run.root, rec.id
            obj = parent
        else:
            vp, always = viewport_points_for(display, len(data), point_threshold)
            obj = splats.create_splat_object(name, data, coll, origin=centroid, viewport_points=vp,
                                             always_points=always, source=rec.splat_file)
        obj[RUN_PROP], obj["instascene_instance"] = run.root, rec.id
        objects[rec.id] = obj
    bg = None
    if background is not None:
        vp, always = viewport_points_for(display, len(background), point_threshold)
        bg = splats.create_splat_object("background", background, coll, viewport_points=vp,
                                        always_points=always, source=bg_path)
        bg[RUN_PROP], bg["instascene_background"] = run.root, 1
        bg["instascene_background_completed"] = int(bg_kind == "completed")
    for key, obj in [*objects.items(), ("background", bg)]:
        if obj is not None:
            obj[REST_PROP] = [float(v) for v in obj.matrix_world.translation]
            if key in moves:  # where the artist had put it: the same move from its new rest place
                obj.matrix_world = moves[key] @ obj.matrix_world
    superseded = _hide_source_scene(run, scene)
    raise_transparent_bounces(scene)
    return {"collection": coll, "superseded": superseded, "instances": objects, "background": bg,
            "background_kind": bg_kind,
            "skipped": skipped, "replaced": old is not None}
