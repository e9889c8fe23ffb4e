"""One typed configuration: presets, JSON overrides, round trips."""

import json

import pytest

from histopipe.core.configs import (ConfigError, PipelineConfig, demo_config, full_config,
                                    load_config)
from histopipe.core.errors import UserError


def test_full_preset_is_panda_sized():
  config = full_config()
  assert 16 <= config.tiling.tiles_per_slide <= 36
  # PANDA's level 1: 0.5 um/px x 4
  assert config.tiling.tile_size == 256 and config.tiling.target_mpp == 2.0
  assert config.tiling.level_downsample == 4.0 and config.tiling.level == -1
  assert config.model.backbone == "resnet50" and config.model.input_size == 224


def test_json_round_trip_keeps_types():
  config = demo_config()
  again = PipelineConfig.from_json(config.to_json())
  assert again == config
  assert isinstance(again.beam_pipeline_args, tuple)


def test_file_overrides_fields_of_its_preset(tmp_path):
  path = tmp_path / "c.json"
  path.write_text(json.dumps({"preset": "full", "training": {"epochs": 3}}))
  config = load_config(str(path))
  assert config.preset == "full" and config.training.epochs == 3
  assert config.training.batch_size == full_config().training.batch_size


@pytest.mark.parametrize("overrides,message", [
    ({"tiling": {"tile_sise": 3}},
     r"^config.tiling.tile_sise: unknown field; known: jpeg_quality, level, "),
    ({"training": {"epochs": "ten"}},
     r"^config.training.epochs: Input should be a valid integer \(got 'ten'\)$"),
    ({"training": {"epochs": 2.5}}, r"^config.training.epochs: Input should be a valid integer"),
    ({"tiling": {"tile_format": "gif"}},
     r"^config.tiling.tile_format: Input should be 'png' or 'jpeg' \(got 'gif'\)$"),
    ({"kubeflow": {"trainer": {"gpus": "1"}}}, r"^config.kubeflow.trainer.gpus: "),
    ({"training": {"epochs": "ten"}, "model": {"dropout": "high"}},
     r"config.model.dropout: .*; config.training.epochs: |"
     r"config.training.epochs: .*; config.model.dropout: "),
    ({"preset": "huge"}, "unknown preset 'huge'"),
    ({"tiling": {"tiles_per_slide": -1}}, r"config.tiling.tiles_per_slide: .*greater than or"),
    ({"model": {"encoder": "resnet50_trunc", "tiles_used": 4}}, r"config.model: .*tiles_used .* set it to 0"),
])
def test_bad_config_files_say_what_is_wrong(tmp_path, overrides, message):
  """Wrong types, unknown fields and unknown choices fail at load, one line naming the field."""
  path = tmp_path / "c.json"
  path.write_text(json.dumps(overrides))
  with pytest.raises(ConfigError, match=message) as raised:
    load_config(str(path))
  assert isinstance(raised.value, UserError) and "\n" not in str(raised.value)


@pytest.mark.parametrize("text,message", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "holds a JSON object, not list"),
])
def test_unreadable_config_files_name_the_file(tmp_path, text, message):
  path = tmp_path / "c.json"
  path.write_text(text)
  with pytest.raises(ConfigError, match=message):
    load_config(str(path))
  with pytest.raises(ConfigError, match="cannot read the config file"):
    load_config(str(tmp_path / "missing.json"))


def test_replacing_a_field_is_checked_too():
  import dataclasses
  with pytest.raises(ValueError, match="valid integer"):
    dataclasses.replace(demo_config().training, epochs="ten")


def test_tuned_values_land_in_their_config_fields():
  from histopipe.core.configs import demo_config, with_tuned_values
  config = with_tuned_values(demo_config(), {"learning_rate": 3e-4, "dropout": 0.5,
                                             "pooling": "max", "tiles_used": 4})
  assert config.training.learning_rate == 3e-4
  assert (config.model.dropout, config.model.pooling, config.model.tiles_used) == (0.5, "max", 4)
  assert config.tiling == demo_config().tiling
  with pytest.raises(ValueError, match="unknown hyperparameter"):
    with_tuned_values(demo_config(), {"momentum": 0.9})
