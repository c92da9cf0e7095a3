"""Leaf helpers that import nothing else of diffvision (only :mod:`diffvision.errors`):
distributed communication (:mod:`~diffvision.utils.comm`), the one seed derivation
(:mod:`~diffvision.utils.seeding`) and reading user files without running code
(:mod:`~diffvision.utils.safe_files`)."""
