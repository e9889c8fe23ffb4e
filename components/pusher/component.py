"""The Pusher component with the idempotent executor (the node id stays "Pusher")."""

from __future__ import annotations


from tfx.components.pusher.component import Pusher
from tfx.dsl.components.base import executor_spec
from histopipe.components.pusher.executor import IdempotentPusherExecutor

class IdempotentPusher(Pusher):
  """TFX's Pusher component with the executor above (its node id stays "Pusher")."""

  EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(IdempotentPusherExecutor)
