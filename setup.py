"""cdl-tf: Coded Deep Learning for TensorFlow / tf_keras."""
from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "tensorflow==2.21.0",
    "tf-keras==2.21.0",
    "tensorflow-model-optimization==0.8.1",
    "tensorboard==2.21.0",
    "tensorflow-datasets==4.9.10",
    "absl-py==1.4.0",
    "ml-collections==1.1.0",
    "constriction==0.5.0",
    "ai-edge-litert==2.3.0",
    "matplotlib==3.11.2",
    "numpy==2.4.6",
]

setup(
    name="cdl-tf",
    version="0.1.0",
    description=(
        "Coded Deep Learning: training with a trainable probabilistic quantizer and "
        "entropy constraints, export to entropy-coded weights and TFLite int8."
    ),
    python_requires=">=3.10,<3.13",
    # The absl apps of tools/ install as cdl_tf.tools; configs/ are read by path, not installed.
    packages=find_packages(include=["cdl_tf", "cdl_tf.*", "tflite_export"]) + ["cdl_tf.tools"],
    package_dir={"cdl_tf.tools": "tools"},
    install_requires=INSTALL_REQUIRES,
    extras_require={"test": ["pytest==9.2.0", "pytest-xdist==3.8.0", "execnet==2.1.2", "hypothesis==6.170.17"]},
    entry_points={
        "console_scripts": [
            "cdl-train=cdl_tf.tools.train:run",
            "cdl-evaluate=cdl_tf.tools.evaluate:run",
            "cdl-bench=cdl_tf.tools.bench:run",
            "cdl-export=cdl_tf.tools.export:run",
            "cdl-decode=cdl_tf.tools.decode:run",
            "cdl-plot=cdl_tf.tools.plot:run",
        ]
    },
)
