"""InstaScene backend: 2DGS scenes in, object instances out.

Layers (each imports only those above it):
  errors, io      file formats and the scene loader (numpy only)
  render          the 2DGS rasterizer: torch reference everywhere, gsplat on CUDA
  cli             the `instascene` command
The backend never imports bpy; the Blender add-on never imports torch.
"""

__version__ = "0.1.0"
