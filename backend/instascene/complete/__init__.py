"""In-situ completion of each segmented instance (issue 5): view ring, occlusion-aware
condition selection, unseen-region grid, generators, 2DGS fine-tune, TSDF mesh."""
