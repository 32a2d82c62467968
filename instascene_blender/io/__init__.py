"""File formats, numpy and the standard library only (no bpy), like glTF's io/ layer.

Everything here can be imported and tested without Blender: Gaussian splat PLY
read/write (`ply`), triangle-mesh PLY (`mesh_ply`), cameras from COLMAP,
cameras.json and scene folders (`cameras`), run folders (`run_folder`), world-matrix
baking with SH rotation (`transform`) and the backend HTTP client (`service`).
"""
