"""histopipe: whole-slide images to a served MIL model, as a TFX pipeline.

This file also ships the code to Beam workers (`--setup_file=./setup.py`).
Exact versions live in requirements/constraints.txt; install with
`pip install -c requirements/constraints.txt -e .` so pip never backtracks.
"""

import ast
import os

from setuptools import find_packages, setup

# The design card's top level: each concern is a folder at the repository root
# and installs as a subpackage of the one package `histopipe` (histopipe.trainer
# from trainer/, ...), so module paths in the DAG and the compiled spec name
# histopipe and nothing else. pyproject.toml's build-system makes `pip install
# -e` a PEP 660 editable install, which honours this mapping.
HERE = os.path.dirname(os.path.abspath(__file__))


def _subpackages():
  """histopipe.SUBPACKAGES, read without importing the package."""
  with open(os.path.join(HERE, "histopipe", "__init__.py"), encoding="utf-8") as f:
    tree = ast.parse(f.read())
  (value,) = [node.value for node in tree.body if isinstance(node, ast.Assign)
              and [t.id for t in node.targets] == ["SUBPACKAGES"]]
  return ast.literal_eval(value)


SUBPACKAGES = _subpackages()


def _packages():
  found = ["histopipe"]
  for folder in SUBPACKAGES:
    found += [f"histopipe.{folder}"] + [f"histopipe.{folder}.{name}"
                                        for name in find_packages(os.path.join(HERE, folder))]
  return found


setup(
    name="histopipe",
    version="0.1.0",
    description="TFX pipeline for deep learning on histopathology whole-slide images",
    python_requires=">=3.9,<3.11",
    packages=_packages(),
    package_dir={"histopipe": "histopipe", **{f"histopipe.{folder}": folder
                                              for folder in SUBPACKAGES}},
    # model-card-toolkit's JSON schema, which the model cards are checked against.
    package_data={"histopipe.components.model_card": ["model_card.schema.json"]},
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
        # libturbojpeg with a binding of its lossless transform: bag tiles cut
        # from a slide's own JPEG data (slides/jpeg_crop.py).
        "jpegtran-cffi-wheels",
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
