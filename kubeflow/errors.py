"""What `histopipe kubeflow run-local` refuses or reports as a user's problem:
one line naming the task and why (exit status 2)."""

from histopipe.core.errors import UserError


class PackageError(UserError):
  """A package this tool cannot run, or a run it cannot start; says which task and why."""


class TaskFailed(UserError):
  """A task's command exited non-zero; names the task and its log."""
