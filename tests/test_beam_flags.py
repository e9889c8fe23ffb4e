"""Beam flags from a preset and the command line merge as Beam itself reads them:
list flags add up, single-valued ones are replaced; checked with Beam's own
PipelineOptions parsing the merged flags."""

import pytest
from apache_beam.options.pipeline_options import (DebugOptions, GoogleCloudOptions,
                                                  PipelineOptions, SetupOptions, StandardOptions)

from histopipe.beam.flags import appends, merge_beam_args, require_filled
from histopipe.core.configs import BEAM_PRESETS
from histopipe.core.errors import UserError


def test_list_flags_are_read_from_beam():
  assert appends("--experiments") and appends("--dataflow_service_options")
  assert not appends("--project") and not appends("--runner")


def test_experiments_from_the_preset_survive_and_single_flags_are_replaced():
  merged = merge_beam_args(BEAM_PRESETS["dataflow"], [
      "--experiments=enable_prime", "--experiments shuffle_mode=service",
      "--project=my-project", "--region", "europe-west4",
      "--temp_location=gs://bucket/tmp", "--save_main_session"])
  options = PipelineOptions(merged)
  assert options.view_as(DebugOptions).experiments == [
      "use_runner_v2", "enable_prime", "shuffle_mode=service"]
  cloud = options.view_as(GoogleCloudOptions)
  assert (cloud.project, cloud.region) == ("my-project", "europe-west4")
  assert options.view_as(StandardOptions).runner == "DataflowRunner"
  assert options.view_as(SetupOptions).save_main_session is True
  # Each single-valued flag appears once: the given value replaced the placeholder.
  assert [a for a in merged if a.startswith("--project")] == ["--project=my-project"]
  require_filled(merged)


def test_both_spellings_and_unfilled_placeholders():
  assert merge_beam_args(["--direct_num_workers=1"], ["--direct_num_workers", "4"]) == [
      "--direct_num_workers=4"]
  with pytest.raises(UserError, match="--project=YOUR_PROJECT"):
    require_filled(merge_beam_args(BEAM_PRESETS["dataflow"], []))
  with pytest.raises(UserError, match="does not start with --"):
    merge_beam_args([], ["runner=DirectRunner"])
