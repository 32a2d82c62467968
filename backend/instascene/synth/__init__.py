"""The built-in scene: a cluttered tabletop with ground truth, in the InstaScene data layout."""
