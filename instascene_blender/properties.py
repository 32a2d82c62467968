"""Per-scene settings (saved with the .blend) and per-session UI state (window manager)."""

import bpy
from bpy.props import EnumProperty, FloatProperty, PointerProperty, StringProperty


class InstaSceneSettings(bpy.types.PropertyGroup):
    scene_path: StringProperty(name="Scene", subtype="DIR_PATH", default="",
                               description="Scene folder (or PLY) the backend segments; set by Import")
    run_dir: StringProperty(name="Run Folder", subtype="DIR_PATH", default="",
                            description="Where segmentation and completion write their results; "
                                        "empty = <data folder or scene's parent>/runs/<scene name>")


class InstaSceneState(bpy.types.PropertyGroup):
    connection: EnumProperty(name="Connection", items=[
        ("UNKNOWN", "Not Connected", ""), ("CONNECTING", "Connecting", ""), ("CONNECTED", "Connected", ""),
        ("OFFLINE", "Offline", ""), ("ERROR", "Error", "")], default="UNKNOWN")
    connection_message: StringProperty(name="Connection Message", default="")
    unavailable: StringProperty(name="Unavailable Jobs", default="{}",
                                description="JSON {kind: reason} from the backend's capabilities")
    job_id: StringProperty(name="Job", default="")
    job_kind: StringProperty(name="Job Kind", default="")
    job_state: StringProperty(name="Job State", default="")
    progress: FloatProperty(name="Progress", default=0.0, min=0.0, max=1.0, subtype="FACTOR")
    stage: StringProperty(name="Stage", default="")
    seconds_left: FloatProperty(name="Time Left", default=-1.0, description="seconds, as the backend estimates; "
                                                                           "negative: not known yet")
    message: StringProperty(name="Message", default="")
    last_error: StringProperty(name="Last Error", default="")
    last_run: StringProperty(name="Last Run", default="")


CLASSES = (InstaSceneSettings, InstaSceneState)


def register_pointers():
    bpy.types.Scene.instascene = PointerProperty(type=InstaSceneSettings)
    bpy.types.WindowManager.instascene = PointerProperty(type=InstaSceneState)


def unregister_pointers():
    for owner in (bpy.types.WindowManager, bpy.types.Scene):
        if hasattr(owner, "instascene"):
            del owner.instascene
