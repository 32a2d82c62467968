"""What the add-on shows when this Blender cannot run it: a panel and a preferences page
that say why in words, instead of a bare "No module named 'numpy'" when enabling.

Imports bpy only (nothing that needs numpy)."""

from __future__ import annotations

import bpy

NUMPY_MISSING = (
    "This Blender's Python has no numpy, which InstaScene needs.",
    "Official Blender builds (blender.org, Steam, the Snap) include it;",
    "some Linux distribution packages do not: install numpy for that",
    "Python (e.g. Debian/Ubuntu: sudo apt install python3-numpy),",
    "or use an official build.",
)


def _draw(layout, lines) -> None:
    col = layout.column(align=True)
    for i, line in enumerate(lines):
        col.label(text=line, icon="ERROR" if i == 0 else "BLANK1")


class INSTASCENE_PT_unavailable(bpy.types.Panel):
    bl_idname = "VIEW3D_PT_instascene"
    bl_label = "InstaScene"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "InstaScene"

    def draw(self, context):
        _draw(self.layout, NUMPY_MISSING)


class InstaSceneUnavailablePreferences(bpy.types.AddonPreferences):
    bl_idname = __package__

    def draw(self, context):
        _draw(self.layout, NUMPY_MISSING)


CLASSES = (INSTASCENE_PT_unavailable, InstaSceneUnavailablePreferences)
