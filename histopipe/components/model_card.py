"""ModelCard: `model_card.json` and `model_card.html` for each pushed model.

After the Pusher. The card says what the model was trained on (slides per
split and data provider, rejected slides and why), what it is (backbone,
pooling, head, tiling, preset), how it did (TFMA's metrics overall and per
provider, with the gate's thresholds), whether its inputs drifted
(DriftCheck), which slides it refers (the referral threshold and coverage
from its contract), what it is for and not for (synthetic data said
plainly), and where it came from (ML Metadata ids of every input and the
pipeline run). Written into the step's artifact and, when the model was
pushed, next to the pushed version (`<serving dir>/<version>/model_card.*`:
TF Serving loads only the SavedModel and ignores them).

Why not model-card-toolkit: no release installs beside our pins (2.0.0, the
last, requires absl-py < 1.1, jsonschema < 4 and TFMA < 0.42; earlier ones pin
TFX < 1.6; apache-beam 2.59 needs jsonschema >= 4), and the project is
archived. The JSON follows its schema (v0.0.2, `model_card.schema.json`
beside this file, Apache-2.0, from model-card-toolkit 2.0.0) and is
validated against it with jsonschema before it is written; histopipe's own
details sit in extra fields of the schema's objects, which it allows.
"""

from __future__ import annotations

import collections
import csv
import datetime
import html
import io
import json
import os
from typing import Any, Dict, List, Optional

import jsonschema
import tensorflow_model_analysis as tfma
from tfx import types
from tfx.dsl.components.base import base_component, base_executor, executor_spec
from tfx.dsl.io import fileio
from tfx.types import artifact_utils, standard_artifacts
from tfx.types.experimental import simple_artifacts
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter

from histopipe.components import bag_features, drift, drift_check, synthetic
from histopipe.core import referral, storage
from histopipe.core.configs import PipelineConfig
from histopipe.core.layout import REJECTS_FILE, SLIDE_REPORT_DIR, TRAINER_SERVING_SUBDIR
from histopipe.core.model_contract import CONTRACT_FILE, ModelContract

COMPONENT_ID = "ModelCard"
CARD_JSON = "model_card.json"
CARD_HTML = "model_card.html"
SCHEMA_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "model_card.schema.json")
SCHEMA_VERSION = "0.0.2"


# model_card.json and model_card.html: a standard type (see
# drift_check.DRIFT_REPORT_TYPE for why not a class of our own).
MODEL_CARD_TYPE = simple_artifacts.File


class ModelCardSpec(ComponentSpec):
  PARAMETERS = {"config": ExecutionParameter(type=str),
                "data_root": ExecutionParameter(type=str),
                # A digest of this code: a cached card is reused only with it.
                "code": ExecutionParameter(type=str, optional=True)}
  INPUTS = {"examples": ChannelParameter(type=standard_artifacts.Examples),
            "model": ChannelParameter(type=standard_artifacts.Model),
            "evaluation": ChannelParameter(type=standard_artifacts.ModelEvaluation),
            "drift_report": ChannelParameter(type=drift_check.DRIFT_REPORT_TYPE),
            "blessing": ChannelParameter(type=standard_artifacts.ModelBlessing),
            "pushed_model": ChannelParameter(type=standard_artifacts.PushedModel)}
  OUTPUTS = {"model_card": ChannelParameter(type=MODEL_CARD_TYPE)}


def slides_per_split(examples: types.Artifact) -> Dict[str, Dict[str, int]]:
  """{split: {provider: bags}} from the Examples' own bags."""
  from tensorflow.core.example import example_pb2  # pylint: disable=import-outside-toplevel
  counts: Dict[str, Dict[str, int]] = {}
  for split in artifact_utils.decode_split_names(examples.split_names):
    pattern = os.path.join(artifact_utils.get_split_uri([examples], split), "*")
    per_provider: Dict[str, int] = collections.Counter()
    for data in drift.read_serialized_bags([pattern]):
      provider = example_pb2.Example.FromString(data).features.feature[
          bag_features.DATA_PROVIDER].bytes_list.value
      per_provider[provider[0].decode() if provider else ""] += 1
    counts[split] = dict(sorted(per_provider.items()))
  return counts


def rejected_slides(examples_uri: str) -> Dict[str, int]:
  """{reason: slides} from the ExampleGen's rejects.csv."""
  path = os.path.join(examples_uri, SLIDE_REPORT_DIR, REJECTS_FILE)
  if not fileio.exists(path):
    return {}
  with fileio.open(path) as f:
    rows = list(csv.DictReader(io.StringIO(f.read())))
  return dict(collections.Counter(row.get("reason", "") for row in rows))


def evaluation_metrics(evaluation_uri: str) -> Dict[str, Dict[str, float]]:
  """{slice ("overall" or the provider): {metric: value}} from TFMA's result."""
  result = tfma.load_eval_result(evaluation_uri)
  metrics = {}
  for slice_key, values in result.slicing_metrics:
    name = "/".join(str(v.decode() if isinstance(v, bytes) else v)
                    for _, v in slice_key) or "overall"
    metrics[name] = {key: float(value["doubleValue"])
                     for key, value in values.get("", {}).get("", {}).items()
                     if "doubleValue" in value}
  return metrics


def _contract(model_uri: str) -> Optional[ModelContract]:
  path = os.path.join(model_uri, TRAINER_SERVING_SUBDIR, "assets.extra", CONTRACT_FILE)
  if not fileio.exists(path):
    return None
  with fileio.open(path) as f:
    return ModelContract.from_json(f.read())


def build_card(config: PipelineConfig, contract: Optional[ModelContract],
               slides: Dict[str, Dict[str, int]], rejects: Dict[str, int],
               metrics: Dict[str, Dict[str, float]], drift_report: dict, blessed: bool,
               pushed: Dict[str, str], lineage: Dict[str, Any], synthetic_data: bool) -> dict:
  """The card as model-card-toolkit's JSON schema lays it out."""
  model, tiling = config.model, config.tiling
  binary = config.task == "binary"
  task = ("a 0/1 label of a patch (e.g. metastasis in a lymph-node patch)" if binary else
          "the ISUP grade group (0-5) of a prostate biopsy")
  scale = (f"{tiling.target_mpp:g} um/px" if tiling.target_mpp else
           f"downsample {tiling.level_downsample:g}")
  architecture = (f"{model.backbone} backbone on {model.input_size} px tiles, "
                  f"{model.pooling} multiple-instance pooling over {config.tiles_per_bag} "
                  f"tiles of {tiling.tile_size} px at {scale} ({tiling.tile_format}), "
                  f"{model.dense_units}-unit dense layer, "
                  + ("one logit (P(label 1))" if binary else
                     "ordinal head (5 cumulative logits; grade = ordinal median)"))
  gate_metric = "auc" if binary else "kappa"
  gate = config.evaluation
  floor, drop = ((gate.min_auc, gate.max_auc_drop) if binary
                 else (gate.min_kappa, gate.max_kappa_drop))
  performance = [{"type": name, "value": f"{value:.4f}", "slice": slice_name}
                 for slice_name, values in metrics.items()
                 for name, value in sorted(values.items())]
  performance += [{"type": f"gate: {gate_metric} at least", "value": f"{floor:g}",
                   "slice": "overall"},
                  {"type": f"gate: largest {gate_metric} drop vs the baseline model",
                   "value": f"{drop:g}", "slice": "overall"}]
  data = [{"name": split, "description": f"{sum(per.values())} slides: " + ", ".join(
      f"{provider or 'no provider'} {count}" for provider, count in per.items())}
          for split, per in slides.items()]
  data.append({"name": "rejected", "description": (
      f"{sum(rejects.values())} slides rejected: " + "; ".join(
          f"{reason} ({count})" for reason, count in sorted(rejects.items()))
      if rejects else "no slide rejected")})
  limitations = []
  if synthetic_data:
    limitations.append({"description": (
        "Trained and evaluated on SYNTHETIC slides made by `histopipe synth` (drawn, not "
        "scanned tissue). This model demonstrates the pipeline; it must not be used on "
        "patients' slides.")})
  limitations += [
      {"description": "Not a medical device: a decision aid whose every grade a pathologist "
                      "reviews; uncertain slides are flagged for referral, not graded."},
      {"description": f"Expects slides tiled as in training ({architecture}); clients read "
                      "the tiling from the model's contract."},
      {"description": drift_report.get("summary", "input drift: no DriftCheck result")},
  ]
  referral_settings = contract.referral if contract else None
  return {
      "schema_version": SCHEMA_VERSION,
      "model_details": {
          "name": config.name,
          "overview": f"Predicts {task} from a whole-slide image.",
          "documentation": (
              f"Trained by the histopipe TFX pipeline ({config.preset or 'custom'} preset, "
              f"{config.data.format} data). Blessed (the gate, then the drift check): "
              f"{'yes' if blessed else 'no'}. " + referral.describe(referral_settings) + "."),
          "version": {"name": pushed.get("version", "not pushed"),
                      "date": datetime.date.today().isoformat()},
          "path": pushed.get("destination", ""),
          "lineage": lineage,
      },
      "model_parameters": {
          "model_architecture": architecture,
          "input_format": (f"a tf.Example bag: {config.tiles_per_bag} encoded "
                           f"{tiling.tile_format.upper()} tiles and a 0/1 mask of real ones"),
          "output_format": ("grade (int), probabilities (6 floats), attention per tile"
                            if not binary else
                            "grade (0/1), probabilities (P(label 1)), attention per tile"),
          "data": data,
          "slides_per_split": slides,
          "rejected_slides": rejects,
          "preset": config.preset,
      },
      "quantitative_analysis": {
          "performance_metrics": performance,
          "drift": drift_report,
          "referral": referral_settings,
      },
      "considerations": {
          "users": [{"description": "Pathologists and the ML engineers who run the pipeline."}],
          "use_cases": [{"description": (
              f"Second read: {task} for slides a pathologist also reads; slides whose "
              "uncertainty is above the referral threshold go to the pathologist first.")}],
          "limitations": limitations,
          "tradeoffs": [{"description": referral.describe(referral_settings)}],
          "ethical_considerations": [{"name": "Scanner and stain shift", "mitigation_strategy": (
              "DriftCheck compares each run's bag colour, stain, focus and compression with "
              "the training bags; `histopipe score` writes skew.json for what it scores.")}],
      },
  }


def validate(card: dict) -> None:
  """Raises jsonschema.ValidationError unless `card` follows the schema."""
  with open(SCHEMA_FILE) as f:
    jsonschema.validate(card, json.load(f))


def _rows(rows: List[List[str]]) -> str:
  return "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
                 for row in rows)


def render_html(card: dict) -> str:
  """The card as one self-contained page (no scripts, no network)."""
  details, parameters = card["model_details"], card["model_parameters"]
  analysis, considerations = card["quantitative_analysis"], card["considerations"]
  metrics = _rows([[m["slice"], m["type"], m["value"]]
                   for m in analysis["performance_metrics"]])
  data = _rows([[d["name"], d["description"]] for d in parameters["data"]])
  limits = "".join(f"<li>{html.escape(l['description'])}</li>"
                   for l in considerations["limitations"])
  uses = "".join(f"<li>{html.escape(u['description'])}</li>" for u in considerations["use_cases"])
  lineage = _rows([[key, value] for key, value in details["lineage"].items()])
  return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Model card: {html.escape(details['name'])}</title>
<style>body{{font-family:sans-serif;max-width:960px;margin:2em auto}}td{{border:1px solid #ccc;
padding:3px 8px}}table{{border-collapse:collapse}}</style></head><body>
<h1>Model card: {html.escape(details['name'])} (version {html.escape(details['version']['name'])})</h1>
<p>{html.escape(details['overview'])} {html.escape(details['documentation'])}</p>
<h2>Intended use and limits</h2><ul>{uses}{limits}</ul>
<h2>Model</h2><p>{html.escape(parameters['model_architecture'])}</p>
<p>Input: {html.escape(parameters['input_format'])}. Output: {html.escape(parameters['output_format'])}.</p>
<h2>Data</h2><table>{data}</table>
<h2>Metrics (eval split) and the gate</h2><table>{metrics}</table>
<h2>Referral</h2><p>{html.escape(considerations['tradeoffs'][0]['description'])}</p>
<h2>Input drift</h2><p>{html.escape(analysis['drift'].get('summary', 'not checked'))}</p>
<h2>Lineage (ML Metadata)</h2><table>{lineage}</table>
<p>Pushed to: {html.escape(details['path'] or 'not pushed')}</p>
</body></html>
"""


def write_card(card: dict, folder: str) -> None:
  validate(card)
  fileio.makedirs(folder)
  with fileio.open(os.path.join(folder, CARD_JSON), "w") as f:
    json.dump(card, f, indent=1)
  with fileio.open(os.path.join(folder, CARD_HTML), "w") as f:
    f.write(render_html(card))


class ModelCardExecutor(base_executor.BaseExecutor):

  def Do(self, input_dict: Dict[str, List[types.Artifact]],
         output_dict: Dict[str, List[types.Artifact]], exec_properties: Dict[str, Any]) -> None:
    config = PipelineConfig.from_json(exec_properties["config"])
    one = {key: artifact_utils.get_single_instance(value) for key, value in input_dict.items()}
    with fileio.open(os.path.join(one["drift_report"].uri, drift_check.REPORT_FILE)) as f:
      drift_report = json.load(f)
    pushed_model = one["pushed_model"]
    pushed = {}
    if pushed_model.get_int_custom_property("pushed") == 1:
      pushed = {"version": pushed_model.get_string_custom_property("pushed_version"),
                "destination": pushed_model.get_string_custom_property("pushed_destination")}
    lineage = {f"{key} artifact id": artifact.id for key, artifact in sorted(one.items())}
    run_id = getattr(self._context, "pipeline_run_id", None) if self._context else None
    if run_id:
      lineage["pipeline run"] = run_id
    data_root = exec_properties.get("data_root", "")
    card = build_card(
        config, _contract(one["model"].uri), slides_per_split(one["examples"]),
        rejected_slides(one["examples"].uri), evaluation_metrics(one["evaluation"].uri),
        drift_report, one["blessing"].get_int_custom_property("blessed") == 1, pushed, lineage,
        synthetic_data=bool(data_root) and storage.exists(
            storage.join(data_root, synthetic.SYNTHETIC_MARKER)))
    out = artifact_utils.get_single_instance(output_dict["model_card"])
    write_card(card, out.uri)
    if pushed.get("destination"):
      write_card(card, pushed["destination"])


class ModelCard(base_component.BaseComponent):
  """Writes the model card of the trained model, and next to its push."""

  SPEC_CLASS = ModelCardSpec
  EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(ModelCardExecutor)

  def __init__(self, examples, model, evaluation, drift_report, blessing, pushed_model,
               config: PipelineConfig, data_root, code: str = ""):
    super().__init__(spec=ModelCardSpec(
        examples=examples, model=model, evaluation=evaluation, drift_report=drift_report,
        blessing=blessing, pushed_model=pushed_model, config=config.to_json(),
        data_root=data_root, code=code, model_card=types.Channel(type=MODEL_CARD_TYPE)))
