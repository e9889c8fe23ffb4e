"""The settings a model carries, and the flags that may or may not contradict them."""

import dataclasses
import json

import pytest

from histopipe.core.configs import load_config
from histopipe.core.model_contract import (ContractMismatch, ModelContract, contract_of,
                                           flag_settings, settings_for, stated_fields)


def _trained(**tiling):
  config = load_config(None, preset="demo")
  return dataclasses.replace(config, tiling=dataclasses.replace(config.tiling, **tiling))


def test_contract_round_trips_through_json_and_names_the_classes():
  contract = contract_of(_trained(tile_size=32, tiles_per_slide=4))
  again = ModelContract.from_json(contract.to_json())
  assert again == contract
  assert again.tiles_per_bag == 4 and again.tiling.tile_size == 32
  assert again.task == "isup" and len(again.class_names) == 6
  pcam = load_config(None, preset="demo")
  pcam = dataclasses.replace(pcam, data=dataclasses.replace(pcam.data, format="pcam"))
  binary = contract_of(pcam)
  assert binary.task == "binary" and binary.tiles_per_bag == 1
  assert binary.class_names == ("negative", "positive")
  assert ("bags of 4 tiles of 32 px (png) at 2 um/px (else downsample 4)"
          in contract.describe())


def test_no_flags_means_the_models_own_settings():
  trained = _trained(tile_size=32, tiles_per_slide=4, tile_format="jpeg")
  config, stated = flag_settings(None, None, None)
  assert stated == set()
  settings = settings_for(contract_of(trained), config, stated)
  assert settings.tiling == trained.tiling and settings.data.format == "panda"
  assert settings.model.input_size == trained.model.input_size


def test_which_fields_each_flag_states(tmp_path):
  assert stated_fields(None, None, "pcam") == {"data.format"}
  by_preset = stated_fields(None, "full", None)
  assert "tiling.tile_size" in by_preset and "model.input_size" in by_preset
  assert "data.format" not in by_preset
  path = tmp_path / "c.json"
  path.write_text(json.dumps({"tiling": {"tile_size": 32}, "training": {"epochs": 3}}))
  assert stated_fields(str(path), None, None) == {"tiling.tile_size"}
  path.write_text(json.dumps({"preset": "demo"}))
  assert "tiling.tiles_per_slide" in stated_fields(str(path), None, None)


def test_a_contradicting_flag_is_an_error_that_says_what_the_model_was_trained_with(tmp_path):
  contract = contract_of(_trained(tile_size=32, tiles_per_slide=4))
  config, stated = flag_settings(None, "full", None)
  with pytest.raises(ContractMismatch) as raised:
    settings_for(contract, config, stated)
  message = str(raised.value)
  assert "tiling.tile_size: the model was trained with 32, the flags give 256" in message
  assert "tiling.tiles_per_slide: the model was trained with 4, the flags give 36" in message
  assert "bags of 4 tiles of 32 px" in message
  # A flag that agrees is fine; one field stated, the rest from the model.
  path = tmp_path / "c.json"
  path.write_text(json.dumps({"tiling": {"tile_size": 32}}))
  config, stated = flag_settings(str(path), None, "panda")
  assert settings_for(contract, config, stated).tiling.tiles_per_slide == 4
  config, stated = flag_settings(None, None, "pcam")
  with pytest.raises(ContractMismatch, match="data.format: the model was trained with 'panda'"):
    settings_for(contract, config, stated)


def test_a_model_without_a_contract_uses_the_flags():
  config, stated = flag_settings(None, "full", None)
  assert settings_for(None, config, stated) == config
