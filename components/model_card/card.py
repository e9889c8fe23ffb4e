"""The model card document: its content (model-card-toolkit's schema v0.0.2, checked with
jsonschema) and its HTML page, a small template of our own (no jinja2)."""

from __future__ import annotations

import datetime
import html
import json
import os
from typing import Any, Dict, List, Optional

import jsonschema
from tfx.dsl.io import fileio

from histopipe.core import referral
from histopipe.core.configs import PipelineConfig
from histopipe.core.model_contract import ModelContract

CARD_JSON = "model_card.json"
CARD_HTML = "model_card.html"
SCHEMA_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "model_card.schema.json")
SCHEMA_VERSION = "0.0.2"


DIFF_SUFFIX = "_diff"  # TFMA's name of a metric's change against the baseline model
OVERALL = "overall"


def _formatted(name: str, value: float) -> str:
  """Counts as whole numbers, the rest to 4 decimals; a change with its sign."""
  if name.endswith("count"):
    return f"{round(value):d}"
  return f"{value:+.4f}" if name.endswith(DIFF_SUFFIX) else f"{value:.4f}"


def build_card(config: PipelineConfig, contract: Optional[ModelContract],
               slides: Dict[str, Dict[str, int]], rejects: Dict[str, int],
               metrics: Dict[str, Dict[str, float]], drift_report: dict, blessed: bool,
               pushed: Dict[str, str], lineage: Dict[str, Any], synthetic_data: bool,
               other_baseline: bool = False) -> dict:
  """The card as model-card-toolkit's JSON schema lays it out. `other_baseline`:
  the Evaluator compared this model with another one (its `*_diff` metrics
  say something); otherwise they are left out."""
  model, tiling = config.model, config.tiling
  binary = config.task == "binary"
  task = ("a 0/1 label of a patch (e.g. metastasis in a lymph-node patch)" if binary else
          "the ISUP grade group (0-5) of a prostate biopsy")
  scale = (f"{tiling.target_mpp:g} um/px" if tiling.target_mpp else
           f"downsample {tiling.level_downsample:g}")
  encoder = contract.encoder if contract else None
  tiles = (f"{config.tiles_per_bag} tiles" if config.tiles_per_bag else
           f"every tissue tile (up to {tiling.max_tiles})")
  backbone = (f"frozen encoder {encoder['encoder']} (SHA-256 {encoder['digest']}, "
              f"{encoder['embedding_size']} features a tile, not trained; the head trained "
              f"on its embeddings)" if encoder else f"{model.backbone} backbone")
  architecture = (f"{backbone} on {model.input_size} px tiles, "
                  f"{model.pooling} multiple-instance pooling over {tiles} "
                  f"of {tiling.tile_size} px at {scale} ({tiling.tile_format}), "
                  f"{model.dense_units}-unit dense layer, "
                  + ("one logit (P(label 1))" if binary else
                     "ordinal head (5 cumulative logits; grade = ordinal median)"))
  gate_metric = "auc" if binary else "kappa"
  gate = config.evaluation
  floor, drop = ((gate.min_auc, gate.max_auc_drop) if binary
                 else (gate.min_kappa, gate.max_kappa_drop))
  performance = [{"type": name, "value": _formatted(name, value), "slice": slice_name}
                 for slice_name, values in metrics.items()
                 for name, value in sorted(values.items())
                 # Against the model itself (a re-run whose baseline is this very
                 # model) every change is 0: shown only against another model.
                 if other_baseline or not name.endswith(DIFF_SUFFIX)]
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
          "input_format": (f"a tf.Example bag: {tiles}, encoded as "
                           f"{tiling.tile_format.upper()}, and a 0/1 mask of real ones" +
                           ("; or a bag's tile embeddings (embed_tiles, then "
                            "predict_embeddings)" if encoder else "")),
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


def metrics_table(performance: List[Dict[str, str]]) -> str:
  """The metrics as one table read at a glance: a row a metric, a column a
  slice (overall first, then each provider), a metric's change against the
  baseline beside its value when the card has one; the gate's rows after."""
  gate = [m for m in performance if m["type"].startswith("gate: ")]
  measured = [m for m in performance if not m["type"].startswith("gate: ")]
  slices = sorted({m["slice"] for m in measured}, key=lambda s: (s != OVERALL, s))
  values = {(m["type"], m["slice"]): m["value"] for m in measured}
  names = sorted({m["type"] for m in measured if not m["type"].endswith(DIFF_SUFFIX)},
                 key=lambda n: (not n.endswith("count"), n))
  rows = []
  for name in names:
    cells = [name]
    for slice_name in slices:
      cell = values.get((name, slice_name), "–")
      change = values.get((name + DIFF_SUFFIX, slice_name))
      cells.append(f"{cell} ({change} vs baseline)" if change else cell)
    rows.append(cells)
  header = "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in ["metric"] + slices) + "</tr>"
  gate_rows = _rows([[m["type"][len("gate: "):], m["value"]] for m in gate])
  return f"<table>{header}{_rows(rows)}</table><p>The gate:</p><table>{gate_rows}</table>"


def render_html(card: dict) -> str:
  """The card as one self-contained page (no scripts, no network)."""
  details, parameters = card["model_details"], card["model_parameters"]
  analysis, considerations = card["quantitative_analysis"], card["considerations"]
  metrics = metrics_table(analysis["performance_metrics"])
  data = _rows([[d["name"], d["description"]] for d in parameters["data"]])
  limits = "".join(f"<li>{html.escape(l['description'])}</li>"
                   for l in considerations["limitations"])
  uses = "".join(f"<li>{html.escape(u['description'])}</li>" for u in considerations["use_cases"])
  lineage = _rows([[key, value] for key, value in details["lineage"].items()])
  return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Model card: {html.escape(details['name'])}</title>
<style>body{{font-family:sans-serif;max-width:960px;margin:2em auto}}td{{border:1px solid #ccc;
padding:3px 8px}}th{{text-align:left;padding:3px 8px}}table{{border-collapse:collapse}}</style></head><body>
<h1>Model card: {html.escape(details['name'])} (version {html.escape(details['version']['name'])})</h1>
<p>{html.escape(details['overview'])} {html.escape(details['documentation'])}</p>
<h2>Intended use and limits</h2><ul>{uses}{limits}</ul>
<h2>Model</h2><p>{html.escape(parameters['model_architecture'])}</p>
<p>Input: {html.escape(parameters['input_format'])}. Output: {html.escape(parameters['output_format'])}.</p>
<h2>Data</h2><table>{data}</table>
<h2>Metrics (eval split) and the gate</h2>{metrics}
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
