"""histopipe: whole-slide images to a served MIL model, as a TFX pipeline.

This file also ships the code to Beam workers (`--setup_file=./setup.py`).
Exact versions live in requirements/constraints.txt; install with
`pip install -c requirements/constraints.txt -e .` so pip never backtracks.
"""

from setuptools import find_packages, setup

setup(
    name="histopipe",
    version="0.1.0",
    description="TFX pipeline for deep learning on histopathology whole-slide images",
    python_requires=">=3.9,<3.11",
    packages=find_packages(include=["histopipe", "histopipe.*"]),
    # model-card-toolkit's JSON schema, which the model cards are checked against.
    package_data={"histopipe.components": ["model_card.schema.json"]},
    install_requires=[
        "tfx[kfp]==1.16.0",
        "apache-beam[gcp]==2.59.0",
        "tensorflow==2.16.2",
        "tensorflow-transform==1.16.0",
        "tensorflow-model-analysis==0.47.1",
        "tf-keras==2.16.0",
        "tensorflow-serving-api==2.16.1",
        "grpcio",
        "requests",
        "tifffile",
        "imagecodecs",
        "opencv-python-headless",
        "matplotlib",
        "pydantic>=2",
        "tqdm",
        # Data folders, labels and slides in local folders or buckets (gs://).
        "fsspec",
        "gcsfs",
        "google-crc32c",
        # Slide formats tifffile cannot read (NDPI, MRXS, SCN, BIF, Philips):
        # OpenSlide from a wheel that carries its own library; DICOM WSI.
        "openslide-python",
        "openslide-bin",
        "wsidicom",
        # Drift statistics (TFDV, also TFX's), referral metrics, the model
        # card's schema check.
        "tensorflow-data-validation",
        "scikit-learn",
        "pandas",
        "jsonschema",
    ],
    # The GCS emulator is a real GCS API server for the bucket tests.
    extras_require={"test": ["pytest", "gcp-storage-emulator"]},
    entry_points={"console_scripts": ["histopipe=histopipe.cli:main"]},
)
