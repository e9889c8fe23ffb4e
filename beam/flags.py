"""Beam flags from several places (the config or a preset, then the command line), merged.

Beam's own flags are of two kinds: most take one value, and a later one
replaces an earlier one; a few are lists that each occurrence appends to
(`--experiments`, `--dataflow_service_options`, ...). Merging keeps both
kinds right: a flag given again on the command line replaces the preset's
value only when Beam itself would keep just one. Which flags append is read
from Beam's own argument parsers, not listed here.
"""

from __future__ import annotations

import argparse
import functools
import shlex
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

from histopipe.core.errors import UserError

Flag = Tuple[str, Optional[str]]  # (--name, value or None for a switch)


@functools.lru_cache(maxsize=1)
def _beam_actions() -> Dict[str, argparse.Action]:
  """Every flag Beam's PipelineOptions classes define, with its argparse action."""
  parser = _BeamArgumentParser(allow_abbrev=False)
  for options_class in PipelineOptions.__subclasses__():
    options_class._add_argparse_args(parser)  # pylint: disable=protected-access
  return {option: action for action in parser._actions  # pylint: disable=protected-access
          for option in action.option_strings}


def appends(name: str) -> bool:
  """Whether each occurrence of Beam flag `name` adds a value (action='append')."""
  return isinstance(_beam_actions().get(name), argparse._AppendAction)  # pylint: disable=protected-access


def _is_switch(name: str) -> bool:
  action = _beam_actions().get(name)
  return action is not None and action.nargs == 0


def split_flags(args: Iterable[str]) -> List[Flag]:
  """`--name=value`, `--name value` (as two words or one) and `--switch` as (name, value)."""
  words = [word for arg in args for word in shlex.split(arg)]
  flags: List[Flag] = []
  index = 0
  while index < len(words):
    word = words[index]
    if not word.startswith("--"):
      raise UserError(f"Beam flag {word!r} does not start with --")
    name, equals, value = word.partition("=")
    if equals:
      flags.append((name, value))
    elif (not _is_switch(name) and index + 1 < len(words)
          and not words[index + 1].startswith("--")):
      flags.append((name, words[index + 1]))
      index += 1
    else:
      flags.append((name, None))
    index += 1
  return flags


def merge_beam_args(base: Sequence[str], extra: Sequence[str]) -> List[str]:
  """`base` then `extra`, as `--name=value` words; a single-valued flag in
  `extra` replaces the same flag in `base`, an appending one adds to it."""
  added = split_flags(extra)
  replaced = {name for name, _ in added if not appends(name)}
  merged = [flag for flag in split_flags(base) if flag[0] not in replaced] + added
  return [name if value is None else f"{name}={value}" for name, value in merged]


def require_filled(args: Sequence[str]) -> None:
  """Refuses the presets' placeholders (YOUR_PROJECT, ...) left unfilled."""
  placeholders = [arg for arg in args if "YOUR_" in arg]
  if placeholders:
    raise UserError(f"fill in {placeholders} with --beam-arg (e.g. --beam-arg=--project=my-project)")
