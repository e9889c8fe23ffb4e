"""A user's mistake is one line on stderr and exit status 2, never a traceback:
every command with a path that is not there, a bad config value, a bad argument."""

import json
import os
import subprocess
import sys

import pytest

from histopipe import cli

MISSING = "/nonexistent/histopipe-test"


def _commands(tmp_path):
  """(argv, what the one line must say) for every command given a path that is not there."""
  a_file = tmp_path / "a_file"
  a_file.write_text("")
  out = str(tmp_path / "out")
  return [
      (["synth", "--out", str(a_file / "data"), "--slides", "2"], "cannot create the output folder"),
      (["tile", "--data", MISSING, "--out", out], f"{MISSING}: no such data folder"),
      (["run", "--data", MISSING, "--out", out], f"{MISSING}: no such data folder"),
      (["predict", "--server", "localhost:9", f"{MISSING}/a.tiff"],
       f"{MISSING}/a.tiff: no such slide file or folder"),
      (["score", "--model-dir", str(tmp_path), "--data", MISSING, "--out", f"{out}.jsonl"],
       f"{MISSING}: no such slide file or folder"),
      (["score", "--model-dir", MISSING, "--data", str(tmp_path), "--out", f"{out}.jsonl"],
       f"{MISSING}: no such model folder"),
      (["report", "--run", MISSING], f"{MISSING}: no metadata.sqlite"),
      (["explain", f"{MISSING}/a.tiff", "--model-dir", str(tmp_path)],
       f"{MISSING}/a.tiff: no such slide file"),
      (["serve-dev", "--model-dir", MISSING, "--port", "0"], f"{MISSING}: no such model folder"),
      (["kubeflow", "compile", "--out", out, "--image", "i", "--pipeline-root", "gs://b/r",
        "--config", f"{MISSING}.json"], f"{MISSING}.json: cannot read the config file"),
      (["kubeflow", "submit", "--host", "http://localhost:9", "--package", f"{MISSING}.yaml"],
       f"{MISSING}.yaml: cannot read the package (No such file or directory)"),
  ]


def test_every_command_with_a_missing_path_says_so_in_one_line(tmp_path, capsys):
  commands = _commands(tmp_path)
  named = {argv[0] if argv[0] != "kubeflow" else " ".join(argv[:2]) for argv, _ in commands}
  every = set(cli.build_parser()._subparsers._group_actions[0].choices) - {"kubeflow"}
  assert every | {"kubeflow compile", "kubeflow submit"} <= named, "a command is not tried"
  for argv, message in commands:
    assert cli.main(argv) == 2, argv
    captured = capsys.readouterr()
    command = " ".join(argv[:2]) if argv[0] == "kubeflow" else argv[0]
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"histopipe {command}: error: "), lines
    assert message in lines[0], (argv, lines)
    assert captured.out == ""


def test_a_bad_config_value_names_the_field(tmp_path, capsys):
  config = tmp_path / "config.json"
  config.write_text(json.dumps({"training": {"epochs": "ten"}}))
  os.makedirs(tmp_path / "data")
  assert cli.main(["run", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "out"),
                   "--config", str(config)]) == 2
  assert capsys.readouterr().err == (
      "histopipe run: error: config.training.epochs: Input should be a valid integer "
      "(got 'ten')\n")


def test_argument_errors_are_one_line_too():
  done = subprocess.run([sys.executable, "-m", "histopipe", "tile", "--data", "x"],
                        capture_output=True, text=True)
  assert done.returncode == 2
  assert done.stderr == ("histopipe tile: error: the following arguments are required: --out "
                         "(see histopipe tile --help)\n")


@pytest.mark.parametrize("argv,line", [
    (["run", "--data", MISSING, "--out", "/tmp/unused"],
     f"histopipe run: error: {MISSING}: no such data folder"),
    # Imports TensorFlow, gRPC and TF Serving's protos before it fails.
    (["serve-dev", "--model-dir", MISSING, "--port", "0"],
     f"histopipe serve-dev: error: {MISSING}: no such model folder"),
])
def test_the_real_command_prints_one_line_and_no_library_noise(argv, line):
  """In a fresh process, as a user runs it (no TF_CPP_MIN_LOG_LEVEL, no
  warning filters of ours): the libraries' start-up prints nothing either."""
  done = subprocess.run([sys.executable, "-m", "histopipe", *argv], capture_output=True,
                        text=True, env={k: v for k, v in os.environ.items()
                                        if k not in ("TF_CPP_MIN_LOG_LEVEL", "PYTHONWARNINGS")})
  assert done.returncode == 2
  assert done.stderr == line + "\n" and done.stdout == ""
