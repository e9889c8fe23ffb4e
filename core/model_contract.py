"""What an exported model needs of its inputs, written into the model itself.

A model is trained on bags cut with particular settings (tiles per bag, tile
size, the level or µm/px rule, the encoding) from a particular kind of input
(pyramidal slides or patches), and answers for a task (ISUP grade or a 0/1
label). A client that tiles a slide differently still gets an answer, only a
wrong one. So the Trainer stores these settings in the SavedModel twice:
`assets.extra/histopipe_contract.json` (read from a model folder) and the
`metadata` signature (read from any TF Serving with one Predict call), and
`predict`, `score` and `explain` tile with the model's settings. Settings a
user states (`--preset`, `--config`, `--format`) must agree with the model;
when they do not, the command stops and says what the model was trained with.

TensorFlow-free: the trainer writes it, the clients read it, both import this.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Dict, Iterable, List, Optional, Set, Tuple

from histopipe.core.configs import (ISUP_GRADES, PipelineConfig, TilingConfig,
                                    config_from_overrides, load_config, read_overrides)
from histopipe.core.errors import UserError

CONTRACT_FILE = "histopipe_contract.json"  # under the SavedModel's assets.extra/
CONTRACT_VERSION = 1
ISUP_CLASS_NAMES = tuple(f"ISUP {grade}" for grade in range(ISUP_GRADES))
BINARY_CLASS_NAMES = ("negative", "positive")
# The settings a contract fixes, as paths into PipelineConfig.
_TILING_FIELDS = tuple(f.name for f in dataclasses.fields(TilingConfig))
CONTRACT_FIELDS = (("data.format", "model.input_size") +
                   tuple(f"tiling.{name}" for name in _TILING_FIELDS))


class ContractMismatch(UserError):
  """Settings given on the command line that the model was not trained with."""


@dataclasses.dataclass(frozen=True)
class ModelContract:
  format: str  # panda (pyramidal slides), pcam or idc (patches)
  task: str  # "isup" (ordinal grade 0-5) or "binary"
  class_names: Tuple[str, ...]
  tiles_per_bag: int
  input_size: int  # pixels the backbone sees; tiles are resized inside the model
  tiling: TilingConfig  # how bags were cut: tile size, level rule, encoding, ...
  preset: str = ""  # what the training run started from; for people, not checked
  version: int = CONTRACT_VERSION
  # core/referral.choose_threshold's settings, or None (no labelled slides
  # to choose on, or a model exported before referral existed).
  referral: Optional[Dict[str, Any]] = None
  # {image statistic: {"low", "high"}}: the 0.5th-99.5th percentile of the
  # training bags (monitoring/slide_skew.training_ranges), so that a client of
  # a Predict server, which serves no model files, checks each slide against
  # them; None for a model exported before, or without training statistics.
  training_ranges: Optional[Dict[str, Dict[str, float]]] = None
  # The in-graph batching of the tile encoder the export was built with
  # (configs.ServingConfig as a dict), None when it runs unbatched (or the
  # model is older): what a replica's operator sizes its pod and load by.
  serving_batching: Optional[Dict[str, Any]] = None
  # A model on a frozen encoder (model.encoder): {"encoder": its setting,
  # "digest": SHA-256 of its files, "embedding_size": D, "spec": its
  # encoder_spec}; it has the embed_tiles and predict_embeddings signatures.
  # None: a backbone trained end to end.
  encoder: Optional[Dict[str, Any]] = None

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), sort_keys=True)

  @classmethod
  def from_json(cls, text: str) -> "ModelContract":
    try:
      values = json.loads(text)
      values["tiling"] = TilingConfig(**values["tiling"])
      values["class_names"] = tuple(values["class_names"])
      return cls(**values)
    except (ValueError, TypeError, KeyError) as e:
      raise UserError(f"the model's contract cannot be read ({e})") from None

  def describe(self) -> str:
    """One line for people: what the model takes."""
    tiling = self.tiling
    scales = ([f"{tiling.target_mpp:g} um/px"] if tiling.target_mpp else []) + (
        [f"downsample {tiling.level_downsample:g}"] if tiling.level_downsample else [])
    level = f"level {tiling.level}" if tiling.level >= 0 else " (else ".join(scales) + (
        ")" if len(scales) == 2 else "")
    bag = (f"bags of {self.tiles_per_bag} tiles" if self.tiles_per_bag else
           f"bags of every tissue tile (up to {tiling.max_tiles})")
    return (f"{self.format} {self.task} model: {bag} of "
            f"{tiling.tile_size} px ({tiling.tile_format}) at {level}, "
            f"input {self.input_size} px")

  def settings(self, base: Optional[PipelineConfig] = None) -> PipelineConfig:
    """`base` (default: the demo preset) with the contract's settings in place."""
    base = base or load_config(None, preset="demo")
    return dataclasses.replace(
        base, data=dataclasses.replace(base.data, format=self.format),
        tiling=self.tiling, model=dataclasses.replace(base.model, input_size=self.input_size))


def contract_of(config: PipelineConfig, referral: Optional[Dict[str, Any]] = None,
                training_ranges: Optional[Dict[str, Dict[str, float]]] = None,
                encoder: Optional[Dict[str, Any]] = None) -> ModelContract:
  """The contract of a model trained with `config` (its format resolved)."""
  return ModelContract(
      format=config.data.format, task=config.task,
      class_names=BINARY_CLASS_NAMES if config.task == "binary" else ISUP_CLASS_NAMES,
      tiles_per_bag=config.tiles_per_bag, input_size=config.model.input_size,
      tiling=config.tiling, preset=config.preset, referral=referral,
      training_ranges=training_ranges,
      serving_batching=(json.loads(json.dumps(dataclasses.asdict(config.serving)))
                        if config.serving.batching else None),  # as JSON gives it back
      encoder=encoder)


def _value(config: PipelineConfig, path: str) -> Any:
  value: Any = config
  for name in path.split("."):
    value = getattr(value, name)
  return value


def stated_fields(config_path: Optional[str], preset: Optional[str],
                  data_format: Optional[str]) -> Set[str]:
  """The contract fields a user's flags set: `--format` sets data.format; a
  preset (`--preset`, or one named in the file) sets every tiling field and
  the input size; a `--config` file the fields it names."""
  return _stated(read_overrides(config_path) if config_path else {}, preset, data_format)


def _stated(overrides: Dict[str, Any], preset: Optional[str],
            data_format: Optional[str]) -> Set[str]:
  stated: Set[str] = set()
  if data_format:
    stated.add("data.format")
  if preset or "preset" in overrides:
    stated.update(path for path in CONTRACT_FIELDS if path != "data.format")
  for section, values in overrides.items():
    if isinstance(values, dict):
      stated.update(f"{section}.{name}" for name in values
                    if f"{section}.{name}" in CONTRACT_FIELDS)
  return stated


def mismatches(contract: ModelContract, config: PipelineConfig,
               stated: Iterable[str]) -> List[str]:
  """`path: the model was trained with X, the flags give Y` for each stated
  field that differs from the model."""
  trained = contract.settings(config)
  return [f"{path}: the model was trained with {_value(trained, path)!r}, "
          f"the flags give {_value(config, path)!r}"
          for path in sorted(stated) if _value(trained, path) != _value(config, path)]


def flag_settings(config_path: Optional[str], preset: Optional[str],
                  data_format: Optional[str]) -> Tuple[PipelineConfig, Set[str]]:
  """The settings `--config/--preset/--format` make (the demo preset and
  panda when none is given) and which contract fields they state."""
  overrides = read_overrides(config_path) if config_path else {}
  config = config_from_overrides(overrides, preset or "demo")
  if data_format:
    config = dataclasses.replace(config, data=dataclasses.replace(config.data,
                                                                  format=data_format))
  return config, _stated(overrides, preset, data_format)


def settings_for(contract: Optional[ModelContract], config: PipelineConfig,
                 stated: Set[str]) -> PipelineConfig:
  """The settings to tile with for a model: its contract, refusing stated
  flags that contradict it. A model without a contract (exported before
  contracts existed) gets `config`, the flags' settings, as before."""
  if contract is None:
    return config
  problems = mismatches(contract, config, stated)
  if problems:
    raise ContractMismatch(
        f"the flags contradict the model ({contract.describe()}): " + "; ".join(problems) +
        ". Leave out --preset/--config/--format: the model's own settings are used.")
  return contract.settings(config)

