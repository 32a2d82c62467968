"""Add-on preferences: where the backend is, how to start it, its token, the data folder."""

import bpy
from bpy.props import BoolProperty, IntProperty, StringProperty

from .io.service import DEFAULT_URL, default_token_file

ADDON_ID = __package__  # `instascene_blender`, or `bl_ext.<repo>.instascene` when installed


class InstaScenePreferences(bpy.types.AddonPreferences):
    bl_idname = __package__

    backend_url: StringProperty(
        name="Backend URL", default=DEFAULT_URL,
        description="Address of the InstaScene service (`instascene serve`); loopback by default")
    backend_python: StringProperty(
        name="Backend Python", subtype="FILE_PATH", default="",
        description="Python interpreter of the environment where the `instascene` backend is installed "
                    "(with torch); used by Start Backend. Never Blender's own Python")
    token_file: StringProperty(
        name="Token File", subtype="FILE_PATH", default="",
        description="File holding the service token; empty = the backend's default "
                    "($XDG_CONFIG_HOME/instascene/token or ~/.config/instascene/token)")
    data_folder: StringProperty(
        name="Data Folder", subtype="DIR_PATH", default="",
        description="Folder with scenes and runs; passed to the backend as its data root")
    auto_materialize: BoolProperty(
        name="Materialize When Done", default=True,
        description="Build the run's objects as soon as a segment/complete job finishes")
    point_threshold: IntProperty(
        name="Point Preview Above", default=200_000, min=0,
        description="Scenes with more splats are drawn as points in the viewport (discs in renders)")

    def draw(self, context):
        col = self.layout.column()
        col.prop(self, "backend_url")
        col.prop(self, "backend_python")
        row = col.row()
        row.prop(self, "token_file")
        if not self.token_file:
            col.label(text=f"Token: {default_token_file()}", icon="INFO")
        col.prop(self, "data_folder")
        col.prop(self, "auto_materialize")
        col.prop(self, "point_threshold")


class _Defaults:
    """Stand-in when the add-on is registered without an add-on entry (scripts, tests)."""

    backend_url = DEFAULT_URL
    backend_python = ""
    token_file = ""
    data_folder = ""
    auto_materialize = True
    point_threshold = 200_000


def get_prefs(context=None):
    context = context or bpy.context
    addon = context.preferences.addons.get(ADDON_ID) if context and context.preferences else None
    return addon.preferences if addon is not None and addon.preferences is not None else _Defaults()


def token_path(prefs) -> str:
    return bpy.path.abspath(prefs.token_file) if prefs.token_file else default_token_file()


CLASSES = (InstaScenePreferences,)
