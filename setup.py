"""Installs the ``diffvision`` library.

Project code (``projects/detection``, ``projects/segmentation``) is not installed: the scripts in
``tools/`` and the test suite reach it through the repository root on ``sys.path``, the way
detectron2's projects are used.
"""

from setuptools import find_packages, setup

TORCH_PAIR = ["torch==2.14.1", "torchvision==0.29.1"]

setup(
    name="diffvision",
    version="0.1.0",
    description="Diffusion models for downstream vision: DiffusionDet, DDeP, DDPM pixel features.",
    python_requires=">=3.10",
    packages=find_packages(include=["diffvision", "diffvision.*"]),
    install_requires=[
        *TORCH_PAIR,
        "numpy",
        "scipy",
        "pillow",
        "pycocotools",
        "lvis",
        "opencv-python",
        "yacs",
        "pyyaml",
        "tqdm",
        "tensorboard",
        "matplotlib",
        "cityscapesscripts",
    ],
    extras_require={
        "test": ["pytest", "ruff", "onnx", "onnxscript", "onnxruntime"],
        # tools/export.py, tools/demo.py --onnx, tools/benchmark_onnx.py
        "export": ["onnx", "onnxscript", "onnxruntime"],
    },
)
