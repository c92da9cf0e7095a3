import projects.segmentation  # noqa: F401
