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
