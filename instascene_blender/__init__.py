"""InstaScene for Blender (extension entry point).

Imports and displays 2DGS/3DGS scenes, drives the InstaScene backend over HTTP,
materializes its runs as one object per instance and exports edited layouts. It
uses bpy, numpy and the standard library only; it never imports torch or the
backend package.

Layers (after Blender's glTF add-on):
- `io/`: file formats and the HTTP client, numpy + stdlib, importable without Blender;
- `blender/`: builds and reads Blender data;
- `preferences`, `properties`, `operators`, `panel`: the user interface.

This module imports bpy only inside register()/unregister(), so `instascene_blender.io`
works in any Python.
"""



def _classes():
    from . import operators, panel, preferences, properties

    return (*preferences.CLASSES, *properties.CLASSES, *operators.CLASSES, *panel.CLASSES)


_REGISTERED_MISSING = False


def _numpy_available() -> bool:
    try:
        import numpy  # noqa: F401
    except ImportError:
        return False
    return True


def register():
    import bpy

    global _REGISTERED_MISSING
    if not _numpy_available():  # say why in the panel and the preferences, not with a bare ImportError
        from . import missing

        for cls in missing.CLASSES:
            bpy.utils.register_class(cls)
        _REGISTERED_MISSING = True
        print("InstaScene: " + " ".join(missing.NUMPY_MISSING))
        return
    from . import operators, properties

    for cls in _classes():
        bpy.utils.register_class(cls)
    properties.register_pointers()
    bpy.types.TOPBAR_MT_file_import.append(operators.menu_import)
    bpy.types.TOPBAR_MT_file_export.append(operators.menu_export)


def unregister():
    import bpy

    global _REGISTERED_MISSING
    if _REGISTERED_MISSING:
        from . import missing

        for cls in reversed(missing.CLASSES):
            bpy.utils.unregister_class(cls)
        _REGISTERED_MISSING = False
        return
    from . import operators, properties
    from .blender import jobs

    jobs.MANAGER.shutdown()
    jobs.unregister_timer()
    operators.stop_backend()
    bpy.types.TOPBAR_MT_file_export.remove(operators.menu_export)
    bpy.types.TOPBAR_MT_file_import.remove(operators.menu_import)
    properties.unregister_pointers()
    for cls in reversed(_classes()):
        bpy.utils.unregister_class(cls)
