"""The TileEmbedder component: tile bags in, embedding bags out (same splits),
with the encoder's settings and digest as parameters."""

from __future__ import annotations


from tfx import types
from tfx.dsl.components.base import base_beam_component, executor_spec
from tfx.types import standard_artifacts
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter

from histopipe.core.configs import ModelConfig, PipelineConfig
from histopipe.components.tile_embedder.executor import (CONFIG_KEY, EMBEDDINGS_KEY,
                                                         ENCODER_DIGEST_KEY, EXAMPLES_KEY,
                                                         TileEmbedderExecutor)

COMPONENT_ID = "TileEmbedder"


def embedder_settings(config: PipelineConfig) -> PipelineConfig:
  """What the embeddings depend on: the encoder, its spec, the tile size and
  ImageNet weights, and the batch sizes; the rest at defaults, so that
  changing the head or the training reuses the embeddings."""
  model = config.model
  return PipelineConfig(
      model=ModelConfig(encoder=model.encoder, encoder_spec=model.encoder_spec,
                        input_size=model.input_size,
                        imagenet_weights=model.imagenet_weights),
      embedding=config.embedding)


class TileEmbedderSpec(ComponentSpec):
  PARAMETERS = {CONFIG_KEY: ExecutionParameter(type=str),
                # SHA-256 of the encoder's files: new weights at the same path re-embed.
                ENCODER_DIGEST_KEY: ExecutionParameter(type=str),
                # A digest of this code: cached embeddings are reused only with it.
                "code": ExecutionParameter(type=str, optional=True)}
  INPUTS = {EXAMPLES_KEY: ChannelParameter(type=standard_artifacts.Examples)}
  OUTPUTS = {EMBEDDINGS_KEY: ChannelParameter(type=standard_artifacts.Examples)}


class TileEmbedder(base_beam_component.BaseBeamComponent):
  """Embeds every real tile of every bag with the frozen model.encoder, once,
  through Beam's RunInference; writes embedding bags, split as the bags are."""

  SPEC_CLASS = TileEmbedderSpec
  EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(TileEmbedderExecutor)

  def __init__(self, examples: types.BaseChannel, config: PipelineConfig,
               encoder_digest: str, code: str = ""):
    super().__init__(spec=TileEmbedderSpec(
        examples=examples, config=embedder_settings(config).to_json(),
        encoder_digest=encoder_digest, code=code,
        embeddings=types.Channel(type=standard_artifacts.Examples)))
