"""The Blender side: builds and reads Blender data (bpy); knows no file formats (see ../io)."""
