import projects.detection  # noqa: F401
import projects.segmentation  # noqa: F401
