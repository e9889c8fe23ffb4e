"""Where things are, for the module that writes them and the ones that read them.

A local run's folder (`histopipe run --out`), and the slide report inside a
SlideExampleGen's Examples artifact (or a `histopipe tile` output folder).
"""

from __future__ import annotations

import dataclasses
import os

from histopipe.core.errors import UserError

# Inside the Examples artifact: every slide and what happened to it.
SLIDE_REPORT_DIR = "slide_report"
OUTCOMES_FILE = "slides.csv"  # image_id,path,status,reason,tiles
REJECTS_FILE = "rejects.csv"  # image_id,path,reason
# Beside them, one file a split: each bag's image statistics and data provider
# (bag_features.IMAGE_STATISTICS), written as the bags are, so that DriftCheck,
# the Trainer's training statistics, ModelCard and the report read kilobytes,
# not the bags. Outside the split folders: TFX reads every file in those.
BAG_STATISTICS_FILE = "bag_statistics-{split}.csv"  # image_id,data_provider,img_...
SPLIT_PREFIX = "Split-"  # TFX's name of a split's folder in an Examples artifact
EVAL_SPLIT = "eval"  # the split the Evaluator judges, held out from training and early stopping
# In a Model artifact, beside Format-Serving: the exported model's predictions on
# the eval split, made once by the Trainer (trainer/eval_predictions.py).
EVAL_PREDICTIONS_FILE = "eval_predictions.npz"


def bag_statistics_path(examples_uri: str, split: str) -> str:
  """The bag statistics file of one split of an Examples artifact."""
  return "/".join([examples_uri.rstrip("/"), SLIDE_REPORT_DIR,
                   BAG_STATISTICS_FILE.format(split=split)])


def bag_statistics_path_of_split_files(pattern: str) -> str:
  """The same, from the file pattern of a split (`<examples>/Split-train/*`, as
  TFX gives a Trainer its `train_files`)."""
  split_dir = pattern[:-len("/*")] if pattern.endswith("/*") else pattern.rstrip("/")
  examples_uri, _, split_folder = split_dir.rpartition("/")
  if not examples_uri or not split_folder.startswith(SPLIT_PREFIX):
    raise ValueError(f"{pattern}: not the files of a split of an Examples artifact")
  return bag_statistics_path(examples_uri, split_folder[len(SPLIT_PREFIX):])


@dataclasses.dataclass(frozen=True)
class RunPaths:
  """Where a local run keeps its artifacts, metadata, pushed models and report."""
  out_dir: str

  @property
  def pipeline_root(self) -> str:
    return os.path.join(self.out_dir, "pipeline_root")

  @property
  def metadata_path(self) -> str:
    return os.path.join(self.out_dir, "metadata.sqlite")

  @property
  def serving_model_dir(self) -> str:
    return os.path.join(self.out_dir, "serving_model")

  @property
  def report_dir(self) -> str:
    return os.path.join(self.out_dir, "report")

  @property
  def run_log(self) -> str:
    """TFX's, Beam's and TensorFlow's own logging of `histopipe run`."""
    return os.path.join(self.out_dir, "run.log")

  @property
  def report_log(self) -> str:
    """The libraries' logging of `histopipe report`."""
    return os.path.join(self.out_dir, "report.log")

def require_metadata(metadata_path: str) -> str:
  """`metadata_path`, if it is there: ML Metadata would create an empty store,
  and a command would write its log into a folder that holds no run."""
  if not os.path.exists(metadata_path):
    raise UserError(f"{os.path.dirname(metadata_path)}: no "
                    f"{os.path.basename(metadata_path)}: not the --out folder of `histopipe run`")
  return metadata_path


# Where TFX's Trainer puts the SavedModel inside its Model artifact.
TRAINER_SERVING_SUBDIR = "Format-Serving"
