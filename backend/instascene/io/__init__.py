"""File formats (PLY splats, cameras, masks) and the scene loader; numpy only, no torch."""
