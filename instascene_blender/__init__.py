"""InstaScene for Blender (extension entry point).

The add-on talks to the InstaScene backend over HTTP and builds Blender data with
bpy and numpy only — it never imports torch. Its panel, import, materialize and
export operators are tracked in the add-on issue; this release registers nothing yet.
"""

CLASSES: tuple = ()


def register():
    import bpy

    for cls in CLASSES:
        bpy.utils.register_class(cls)


def unregister():
    import bpy

    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
