"""One typed configuration: presets, JSON overrides, round trips."""

import json

import pytest

from histopipe.core.configs import PipelineConfig, demo_config, full_config, load_config


def test_full_preset_is_panda_sized():
  config = full_config()
  assert 16 <= config.tiling.tiles_per_slide <= 36
  assert config.tiling.tile_size == 256 and config.tiling.level == 1
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
    ({"tiling": {"tile_sise": 3}}, r"config.tiling: unknown field\(s\) tile_sise"),
    ({"preset": "huge"}, "unknown preset 'huge'"),
])
def test_bad_config_files_say_what_is_wrong(tmp_path, overrides, message):
  path = tmp_path / "c.json"
  path.write_text(json.dumps(overrides))
  with pytest.raises(ValueError, match=message):
    load_config(str(path))


def test_tuned_values_land_in_their_config_fields():
  from histopipe.core.configs import demo_config, with_tuned_values
  config = with_tuned_values(demo_config(), {"learning_rate": 3e-4, "dropout": 0.5,
                                             "pooling": "max", "tiles_used": 4})
  assert config.training.learning_rate == 3e-4
  assert (config.model.dropout, config.model.pooling, config.model.tiles_used) == (0.5, "max", 4)
  assert config.tiling == demo_config().tiling
  with pytest.raises(ValueError, match="unknown hyperparameter"):
    with_tuned_values(demo_config(), {"momentum": 0.9})
