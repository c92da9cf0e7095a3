"""diffvision's projects. Importing this package registers every task with the engine: the
library's DDPM and the projects' DiffusionDet, DiffusionInst, DDeP and PixelMLP, so that any saved
config (whatever its task) merges into ``get_cfg()``."""

import diffvision.generation  # noqa: F401  (DDPM)
import projects.detection  # noqa: F401
import projects.detection.diffusioninst  # noqa: F401
import projects.segmentation  # noqa: F401
