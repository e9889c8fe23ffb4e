"""Which artifacts belong to which run, read from ML Metadata.

TFX records each run of the pipeline as a `pipeline_run` context holding the
executions of that run (executed, or taken from the cache), and each
execution's output artifacts as events. A summary or report that takes "the
newest Model" and "the newest Examples" can pair a model with examples it
never saw (after a re-run that failed half way); reading one run's own
executions cannot.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Dict, List, Optional

from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2
from tfx.orchestration import metadata

from histopipe.components.model_card import component as model_card
from histopipe.core.errors import UserError
from histopipe.core.layout import require_metadata

_STATE = metadata_store_pb2.Execution.State
_DONE = (_STATE.COMPLETE, _STATE.CACHED)
_OUTPUT_EVENTS = (metadata_store_pb2.Event.OUTPUT, metadata_store_pb2.Event.DECLARED_OUTPUT)
# The last step of every run: a run whose model card was written went all the way.
FINAL_STEP = model_card.COMPONENT_ID
EARLIER_FINAL_STEP = "Pusher"  # of runs made before the model card step
# Resolver nodes (the latest blessed model) look their inputs up on every run:
# recorded as executions, but they run no executor and are never cached.
RESOLVER_TYPE = "tfx.dsl.components.common.resolver.Resolver"


@dataclasses.dataclass
class Step:
  """One component's execution in a run: its state and its output artifacts by key."""
  state: int
  outputs: Dict[str, List[metadata_store_pb2.Artifact]]
  resolver: bool = False

  @property
  def done(self) -> bool:
    return self.state in _DONE

  @property
  def cached(self) -> bool:
    return self.state == _STATE.CACHED


@dataclasses.dataclass
class Run:
  run_id: str
  started_ms: int
  steps: Dict[str, Step]  # component id -> its execution in this run

  @property
  def complete(self) -> bool:
    """The final step is done (for runs made before it existed: the Pusher)."""
    final = FINAL_STEP if FINAL_STEP in self.steps else EARLIER_FINAL_STEP
    return final in self.steps and self.steps[final].done

  @property
  def cached_steps(self) -> List[str]:
    return [name for name, step in self.steps.items() if step.cached]

  @property
  def executed_steps(self) -> List[str]:
    """Steps that ran their executor in this run (not taken from the cache)."""
    return [name for name, step in self.steps.items()
            if step.state == _STATE.COMPLETE and not step.resolver]

  @property
  def failed_steps(self) -> List[str]:
    return [name for name, step in self.steps.items() if step.state == _STATE.FAILED]

  def output(self, step: str, key: str) -> Optional[metadata_store_pb2.Artifact]:
    """The artifact `step` wrote under `key` in this run, or None."""
    artifacts = self.steps[step].outputs.get(key, []) if step in self.steps else []
    return artifacts[0] if artifacts else None


def _open(metadata_path: str) -> metadata_store.MetadataStore:
  return metadata_store.MetadataStore(
      metadata.sqlite_metadata_connection_config(require_metadata(metadata_path)))


def is_cached(metadata_path: str, execution_id: int) -> bool:
  """Whether that execution was taken from the cache rather than run."""
  (execution,) = _open(metadata_path).get_executions_by_id([execution_id])
  return execution.last_known_state == _STATE.CACHED


def read_runs(metadata_path: str) -> List[Run]:
  """Every run recorded in the store, oldest first."""
  store = _open(metadata_path)
  type_names = {t.id: t.name for t in store.get_execution_types()}
  step_of: Dict[int, str] = {}
  for node in store.get_contexts_by_type("node"):
    name = node.name.split(".", 1)[-1]  # "<pipeline>.<component id>"
    for execution in store.get_executions_by_context(node.id):
      step_of[execution.id] = name
  runs = []
  for context in store.get_contexts_by_type("pipeline_run"):
    executions = store.get_executions_by_context(context.id)
    events = store.get_events_by_execution_ids([e.id for e in executions])
    outputs = [e for e in events if e.type in _OUTPUT_EVENTS]
    artifacts = {a.id: a for a in store.get_artifacts_by_id(
        sorted({e.artifact_id for e in outputs}))}
    steps: Dict[str, Step] = {}
    for execution in sorted(executions, key=lambda e: e.id):
      step = Step(execution.last_known_state, {},
                  resolver=type_names.get(execution.type_id) == RESOLVER_TYPE)
      for event in outputs:
        if event.execution_id == execution.id:
          key = event.path.steps[0].key if event.path.steps else ""
          step.outputs.setdefault(key, []).append(artifacts[event.artifact_id])
      steps[step_of.get(execution.id, execution.name)] = step  # a retried step: the latest
    runs.append(Run(context.name, context.create_time_since_epoch, steps))
  return sorted(runs, key=lambda run: (run.started_ms, run.run_id))


def latest_run(metadata_path: str, complete: bool = False) -> Run:
  """The newest run, or the newest that went all the way (`complete`)."""
  runs = [run for run in read_runs(metadata_path) if run.complete or not complete]
  if not runs:
    raise UserError(f"{os.path.dirname(metadata_path)}: no "
                    f"{'complete ' if complete else ''}run in its ML Metadata")
  return runs[-1]
