"""Export the arrangement: every splat object, world matrix baked in, as one splat PLY.

Every InstaScene splat object of the scene is written (hidden ones too, unless
`visible_only`), except whole-scene splats that a materialized run replaced.
"""

from __future__ import annotations

import bpy

from ..io.ply import concatenate, write_splat_ply
from ..io.transform import bake_matrix
from .splats import is_splat_object, read_splat_object


def _superseded(obj) -> bool:
    """Whole-scene splats replaced by a materialized run that is still in the file."""
    run = obj.get("instascene_superseded_by")
    return bool(run) and any(c.get("instascene_run") == run for c in bpy.data.collections)


def splat_objects(scene, visible_only: bool = False, selected_only: bool = False) -> list:
    objs = [o for o in scene.objects if is_splat_object(o) and not _superseded(o)]
    if visible_only:
        objs = [o for o in objs if o.visible_get()]
    if selected_only:
        objs = [o for o in objs if o.select_get()]
    return sorted(objs, key=lambda o: o.name)


def export_layout(filepath: str, objects: list) -> int:
    """Write `objects` (splat objects) to `filepath`; returns the number of splats written."""
    if not objects:
        raise ValueError("no InstaScene splat objects to export (import a scene or materialize a run first)")
    parts = []
    for obj in objects:
        data = read_splat_object(obj)
        parts.append(bake_matrix(data, [list(row) for row in obj.matrix_world]))
    merged = concatenate(parts)
    write_splat_ply(filepath, merged)
    return len(merged)
