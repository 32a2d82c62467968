"""Instance segmentation: tracker, view consensus, feature field, instances (method.md)."""
