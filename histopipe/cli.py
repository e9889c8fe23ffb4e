"""The `histopipe` command: parses the arguments and hands each command to the
package it belongs to.

Each handler loads the settings, calls one function of that package and
prints its result. A UserError (a missing path, a bad value or label file, a
server that does not answer) is one line on stderr and exit status 2, as are
argparse's own errors; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import os

# Transform and TFMA need Keras 2; must be set before TensorFlow is imported.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
# TensorFlow's C++ start-up logs (on a CPU wheel: "Unable to register cuDNN
# factory ...", at error level) are noise in a command's output; Python errors
# still surface. Set TF_CPP_MIN_LOG_LEVEL to see them.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import warnings  # noqa: E402

# Google's client libraries (Beam's GCP extras, TFX's Vertex client) warn on
# every start about versions the pinned stack cannot move: Python 3.10 (TFX
# 1.16) and google-cloud-storage < 3.
warnings.filterwarnings("ignore", category=FutureWarning, module=r"google\.")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from typing import List, Optional  # noqa: E402

from histopipe.core.errors import UserError  # noqa: E402


class _Parser(argparse.ArgumentParser):
  """argparse, with its errors on one line like every other user error."""

  def error(self, message: str):
    self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _config(args, data_format: Optional[str] = None):
  """The settings of --preset/--config, with --format, --slides and --labels
  applied when given."""
  from histopipe.core.configs import load_config
  config = load_config(args.config, preset=args.preset)
  data = config.data
  if data_format:
    data = dataclasses.replace(data, format=data_format)
  if getattr(args, "slides", None):
    data = dataclasses.replace(data, slide_pattern=args.slides)
  if getattr(args, "labels", None):
    data = dataclasses.replace(data, labels_file=args.labels)
  return dataclasses.replace(config, data=data)


def _synth(args) -> int:
  from histopipe.components import synthetic
  if args.format == "pcam":
    patches = synthetic.write_patch_dataset(args.out, args.slides, seed=args.seed,
                                            progress=True)
    print(f"wrote {len(patches)} patches ({sum(p.label for p in patches)} positive) to "
          f"{os.path.join(args.out, 'train')} and labels to "
          f"{os.path.join(args.out, 'train_labels.csv')}")
    return 0
  slides = synthetic.write_dataset(args.out, args.slides, seed=args.seed,
                                   level0_size=(args.width, args.height), progress=True)
  print(f"wrote {len(slides)} slides to {os.path.join(args.out, 'train_images')} "
        f"and labels to {os.path.join(args.out, 'train.csv')} "
        f"(grades {sorted({s.isup_grade for s in slides})})")
  return 0


def _run(args) -> int:
  from histopipe.pipeline.local_runner import PipelineFailed, run_local
  from histopipe.reports import run_summary
  config = _config(args, args.format)
  start = time.time()
  try:
    paths = run_local(config, args.data, args.out, enable_cache=not args.no_cache)
  except PipelineFailed as e:
    print(f"histopipe run: {e}", file=sys.stderr)
    return 1
  summary = run_summary.summarize(paths)
  summary.seconds = time.time() - start
  print(run_summary.format_summary(summary))
  return 0


def _tile(args) -> int:
  from histopipe.components.tile_job import describe, run_tile_job
  config = _config(args, args.format)
  summary = run_tile_job(args.data, args.out, config, gzip=args.gzip)
  print(describe(summary, args.out, gzip=args.gzip))
  if summary["slides_total"] and not summary["slides_written"]:
    print("histopipe tile: error: no slide was tiled; the reasons are in "
          f"{args.out}/rejects.csv", file=sys.stderr)
    return 1
  return 0


def _model_settings(args, contract):
  """The model's own settings; --preset/--config/--format only where they agree."""
  from histopipe.core.model_contract import flag_settings, settings_for
  config, stated = flag_settings(args.config, args.preset, args.format)
  return settings_for(contract, config, stated)


def _predict(args) -> int:
  from histopipe.serving.client import connect
  from histopipe.serving.slide_predictions import find_slides, predict_to
  paths = find_slides(args.slides)
  with connect(args.server, args.model, rest=args.rest, deadline_s=args.deadline,
               retries=args.retries) as client:
    contract = client.contract()
    config = _model_settings(args, contract)
    # Records on a terminal show progress themselves; piped, a counter on stderr does.
    counts = predict_to(paths, client, config, sys.stdout, csv_path=args.csv or "",
                        progress=not sys.stdout.isatty(), concurrency=args.concurrency,
                        referral_settings=contract.referral if contract else None)
  referred = (f", {counts['referred']} of them referred (uncertain)"
              if contract and contract.referral else "")
  print(f"{counts['predicted']} predicted{referred}, {counts['rejected']} rejected of "
        f"{len(paths)}" + (f"; CSV: {args.csv}" if args.csv else ""), file=sys.stderr)
  # A slide rejected for its own content is an answer; one the server never
  # answered is work left undone, and a run that predicted nothing failed.
  if counts["server_failed"]:
    print(f"{counts['server_failed']} slide(s) got no answer from the server: their records "
          "say why; run predict again on them", file=sys.stderr)
    return 1
  return 0 if counts["predicted"] or not paths else 1


def _score(args) -> int:
  from histopipe.components.beam_flags import merge_beam_args
  from histopipe.serving.batch_scoring import score_slides
  from histopipe.serving.saved_model import read_contract
  from histopipe.serving.slide_predictions import find_slides
  paths = find_slides([args.data])
  contract = read_contract(args.model_dir)
  config = _model_settings(args, contract)
  start = time.time()
  referral_settings = contract.referral if contract else None
  counts = score_slides(args.model_dir, paths, config, args.out, csv_path=args.csv or "",
                        beam_args=merge_beam_args(config.beam_pipeline_args, args.beam_arg or []),
                        progress=True, referral_settings=referral_settings)
  referred = f" ({counts['referred']} referred)" if referral_settings else ""
  print(f"{counts['predicted']} scored{referred}, {counts['rejected']} rejected of {len(paths)} in "
        f"{time.time() - start:.1f} s; records: {args.out}"
        + (f"; CSV: {args.csv}" if args.csv else ""))
  from histopipe.serving.saved_model import resolve_version_dir
  from histopipe.serving.skew import check_skew, skew_path
  skew = check_skew(resolve_version_dir(args.model_dir)[0], args.out, config.evaluation)
  print(f"{skew['summary']}; report: {skew_path(args.out)}")
  if skew["drifted"]:
    print("warning: the scored slides differ from the model's training slides (scanner, stain "
          "or focus); check the flagged statistics before trusting the grades", file=sys.stderr)
  return 0


def _report(args) -> int:
  from histopipe.core.layout import RunPaths, require_metadata
  from histopipe.core.library_logs import logging_to
  paths = RunPaths(os.path.abspath(args.run))
  require_metadata(paths.metadata_path)  # before a log file is put there
  with logging_to(paths.report_log):
    from histopipe.reports.run_report import write_report  # imports TensorFlow: logs to the file
    report = write_report(args.run, args.out or '', heatmaps=args.heatmaps)
  print(f"report: {report}")
  return 0


def _explain(args) -> int:
  from histopipe.components.datasets import image_id_from_path
  from histopipe.reports.explain import explain_slide, run_model_dir
  out = args.out or f"{image_id_from_path(args.slide)}_attention.png"
  from histopipe.serving.saved_model import read_contract
  from histopipe.serving.slide_predictions import find_slides
  find_slides([args.slide])  # a missing slide is named before the model is looked at
  model_dir = args.model_dir or run_model_dir(args.run)
  record = explain_slide(args.slide, model_dir,
                         _model_settings(args, read_contract(model_dir)), out)
  print(json.dumps(record))
  print(f"heatmap: {out}", file=sys.stderr)
  return 0


def _serve_dev(args) -> int:
  from histopipe.serving.dev_server import DevServer
  server = DevServer(args.model_dir, args.model, port=args.port, rest_port=args.rest_port,
                     host=args.host).start()
  rest = f", REST on {args.host}:{server.rest_port}" if args.rest_port is not None else ""
  print(f"development server (not TF Serving): model {args.model!r} version "
        f"{server.model.version} from {server.model.path}, gRPC on {args.host}:{server.port}"
        f"{rest}; Ctrl-C stops it", flush=True)
  try:
    server.wait()
  except KeyboardInterrupt:
    server.stop()
  return 0


def _kubeflow_compile(args) -> int:
  from histopipe.kubeflow.compile import compile_pipeline, with_beam_args
  config = with_beam_args(_config(args, args.format), args.beam_preset, args.beam_arg or [])
  compile_pipeline(config, args.out, image=args.image, pipeline_root=args.pipeline_root,
                   data_root=args.data_root, serving_model_dir=args.serving_dir)
  default = f"default {args.data_root}" if args.data_root else "no default: set it per run"
  print(f"wrote {args.out}: KFP v2 pipeline spec, image {args.image}, "
        f"Trainer {config.kubeflow.trainer.gpus} x {config.kubeflow.gpu_resource}, "
        f"parameter data_root ({default})")
  return 0


def _kubeflow_submit(args) -> int:
  from histopipe.kubeflow.submit import parse_params, submit
  run = submit(args.host, args.package, experiment=args.experiment,
               params=parse_params(args.param or []), run_name=args.run_name,
               timeout_s=args.timeout)
  print(f"run id: {run.run_id}\nexperiment: {run.experiment}\nurl: {run.url}")
  return 0


def _kubeflow_run_local(args) -> int:
  from histopipe.kubeflow.run_local import parse_params, run_package
  run = run_package(args.package, args.out, parameters=parse_params(args.param or []),
                    pipeline_root=args.pipeline_root or "", run_id=args.run_id or "",
                    use_cache=not args.no_cache)
  cached = [task.name for task in run.tasks if task.cached]
  print(f"run id: {run.run_id}\n{len(run.tasks) - len(cached)} of {len(run.tasks)} tasks ran"
        + (f" ({', '.join(cached)} from the cache)" if cached else "")
        + f"; artifacts: {run.run_root}\nlogs, executor inputs and outputs: {run.work_dir}")
  return 0


def _add_format_argument(parser) -> None:
  parser.add_argument(
      "--format", default="auto", choices=["auto", "panda", "pcam", "idc"],
      help="dataset layout: panda (train.csv + train_images/*.tiff; ISUP grade, "
      "kappa), pcam (train_labels.csv + train/*.tif) or idc (<patient>/<0|1>/*.png), "
      "both binary (AUC); default: detected from the folder")


def _add_slides_arguments(parser) -> None:
  parser.add_argument("--slides", metavar="GLOB",
                      help="the slide files, relative to --data or absolute, e.g. "
                      "'scans/*.svs'; any type the readers take (.svs, .ndpi, .mrxs, .scn, "
                      ".bif, .tif/.tiff, .dcm). Default: train_images/*, else the files in "
                      "--data itself")
  parser.add_argument("--labels", help="label CSV, absolute or relative to --data "
                      "(default: the format's, train.csv or train_labels.csv); its columns "
                      "tell the format (image_id,data_provider,isup_grade,gleason_score: panda)")


def _add_config_arguments(parser, default_preset: str = "demo") -> None:
  """--preset and --config: the settings, the same ones a model was trained with."""
  parser.add_argument("--preset", default=default_preset, choices=["demo", "full"],
                      help=f"configuration preset (default {default_preset})")
  parser.add_argument("--config", help="JSON file overriding fields of the preset")


def _add_model_settings_arguments(parser) -> None:
  """For commands that query a model: its own settings by default."""
  parser.add_argument("--preset", choices=["demo", "full"],
                      help="not needed: the model's own settings are used; given, it must "
                      "agree with them (for models exported without a contract: default demo)")
  parser.add_argument("--config", help="JSON file of settings; as --preset, must agree with "
                      "the model")
  parser.add_argument("--format", choices=["panda", "pcam", "idc"],
                      help="slides (panda) or patches (pcam, idc); default: the model's")


def build_parser() -> argparse.ArgumentParser:
  parser = _Parser(
      prog="histopipe",
      description="Whole-slide images to a served MIL model: a TFX pipeline "
      "(SlideExampleGen, Transform, Trainer, Evaluator, Pusher).")
  commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

  synth = commands.add_parser(
      "synth", help="write a synthetic PANDA-style (or PatchCamelyon-style) dataset",
      description="Write PANDA-format slides (JPEG-compressed tiled pyramidal "
      "TIFF, levels at downsample 1/4/16) under OUT/train_images/ and labels "
      "in OUT/train.csv; morphology depends on the ISUP grade. With --format "
      "pcam: 96x96 patches OUT/train/<id>.tif and OUT/train_labels.csv (id,label), "
      "positives showing tumour morphology.")
  synth.add_argument("--out", required=True, help="output folder")
  synth.add_argument("--slides", type=int, required=True,
                     help="number of slides (or patches with --format pcam)")
  synth.add_argument("--format", default="panda", choices=["panda", "pcam"],
                     help="dataset layout to write (default panda)")
  synth.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
  synth.add_argument("--width", type=int, default=2048,
                     help="level-0 width in pixels (default 2048)")
  synth.add_argument("--height", type=int, default=1536,
                     help="level-0 height in pixels (default 1536)")
  synth.set_defaults(handler=_synth)

  tile = commands.add_parser(
      "tile", help="tile slides into bags with the SlideExampleGen's Beam code, outside TFX",
      description="Run the same Beam tiling as SlideExampleGen and write "
      "OUT/bags-*.tfrecord (.tfrecord.gz with --gzip), OUT/rejects.csv (image_id,path,reason), "
      "OUT/slides.csv, OUT/summary.json and OUT/previews/<image_id>.png (the "
      "thumbnail with the chosen tiles outlined and numbered).")
  tile.add_argument("--data", required=True, help="data folder with the slides")
  _add_slides_arguments(tile)
  _add_format_argument(tile)
  tile.add_argument("--out", required=True, help="output folder")
  tile.add_argument("--gzip", action="store_true",
                    help="gzip the bag files (2-3%% smaller: the tiles are PNG/JPEG "
                    "already; costs about as much time as tiling)")
  _add_config_arguments(tile)
  tile.set_defaults(handler=_tile)

  run = commands.add_parser(
      "run", help="run the whole pipeline locally (LocalDagRunner)",
      description="Run SlideExampleGen through Pusher on DATA with "
      "LocalDagRunner. OUT receives pipeline_root/, metadata.sqlite (ML "
      "Metadata) and serving_model/<version>/ (the pushed SavedModel).")
  run.add_argument("--data", required=True,
                   help="data folder: train.csv and train_images/*.tiff (PANDA), or a "
                   "PCam or IDC folder")
  _add_slides_arguments(run)
  _add_format_argument(run)
  run.add_argument("--out", required=True, help="output folder")
  run.add_argument("--no-cache", action="store_true",
                   help="run every step again, even where the inputs, settings and code "
                   "are those of an earlier run on this --out (default: reuse its outputs)")
  _add_config_arguments(run)
  run.set_defaults(handler=_run)

  predict = commands.add_parser(
      "predict", help="tile slides and ask a TF Serving model for their grade (gRPC or REST)",
      description="Tile each slide with the SlideExampleGen's code and the settings the "
      "model was trained with (read from its `metadata` signature), call the server's "
      "Predict, and print one JSON line per slide: image_id, grade, probabilities, "
      "attention (per tile: level-0 x, y, size, weight); a slide that cannot be tiled "
      "prints {image_id, path, rejected}. Exit status 2 when the server cannot be "
      "reached or lacks the model or signature.")
  predict.add_argument("slides", nargs="+", metavar="SLIDE_OR_DIR",
                       help="slide files, or folders searched for .tif/.tiff/.png")
  predict.add_argument("--server", required=True,
                       help="HOST:PORT of TF Serving (gRPC 8500; REST 8501 with --rest)")
  predict.add_argument("--model", default="histopipe", help="model name (default histopipe)")
  predict.add_argument("--rest", action="store_true", help="use the REST API instead of gRPC")
  predict.add_argument("--csv", help="also write a submission CSV: image_id,isup_grade "
                       "(id,label for binary models)")
  _add_model_settings_arguments(predict)
  predict.add_argument("--deadline", type=float, default=30.0,
                       help="seconds per call (default 30)")
  predict.add_argument("--retries", type=int, default=3,
                       help="retries on unavailable/timeout, backoff 0.5 s doubling (default 3)")
  predict.add_argument("--concurrency", type=int, default=1, metavar="N",
                       help="slides tiled and in flight at once (default 1); records stay "
                       "in input order")
  predict.set_defaults(handler=_predict)

  score = commands.add_parser(
      "score", help="score a folder of slides with the exported model, in Beam",
      description="Beam RunInference over the SavedModel (no server): tile every slide "
      "under DATA with the SlideExampleGen's code and the model's own settings, score the "
      "bags in "
      "batches, and write predict's JSON lines to OUT (rejected slides included), and "
      "with --csv the submission CSV.")
  score.add_argument("--model-dir", required=True,
                     help="a SavedModel, or the Pusher's serving base (latest version)")
  score.add_argument("--data", required=True, help="folder searched for .tif/.tiff/.png")
  score.add_argument("--out", required=True, help="JSON lines file to write")
  score.add_argument("--csv", help="also write image_id,isup_grade (id,label) here")
  _add_model_settings_arguments(score)
  score.add_argument("--beam-arg", action="append", metavar="FLAG",
                     help="Beam flag, repeatable (e.g. --beam-arg=--runner=DataflowRunner): "
                     "replaces the config's value of a single-valued flag, adds to a list "
                     "flag such as --experiments")
  score.set_defaults(handler=_score)

  report = commands.add_parser(
      "report", help="an HTML report of a local run: gate, metrics, figures, attention",
      description="Write RUN/report/index.html (or --out DIR) with PNG figures: the gate "
      "decision and TFMA's numbers, the eval split's confusion matrix and ROC curves "
      "(cancer vs benign for ISUP) overall and per data provider, kappa/AUC per provider, "
      "and attention heatmaps over a sample of eval slides.")
  report.add_argument("--run", required=True, help="the --out folder of `histopipe run`")
  report.add_argument("--out", help="report folder (default RUN/report)")
  report.add_argument("--heatmaps", type=int, default=6,
                      help="eval slides to draw attention for (default 6)")
  report.set_defaults(handler=_report)

  explain = commands.add_parser(
      "explain", help="attention heatmap of one slide under a SavedModel",
      description="Tile SLIDE as SlideExampleGen does, with the model's own settings, "
      "score it with the SavedModel in this process, write the thumbnail with "
      "each chosen tile coloured by its attention weight, and print the prediction record.")
  explain.add_argument("slide", help="a slide file (pyramidal TIFF)")
  explain_model = explain.add_mutually_exclusive_group(required=True)
  explain_model.add_argument("--model-dir",
                             help="a SavedModel, or the Pusher's serving base (latest version)")
  explain_model.add_argument("--run", help="the --out folder of `histopipe run`: the model "
                             "its latest complete run trained (from ML Metadata)")
  explain.add_argument("--out", help="PNG to write (default <image_id>_attention.png)")
  _add_model_settings_arguments(explain)
  explain.set_defaults(handler=_explain)

  kubeflow = commands.add_parser(
      "kubeflow", help="compile the pipeline for Kubeflow Pipelines, try it here, or submit "
      "a run",
      description="Kubeflow Pipelines v2: `compile` writes the DAG `run` runs locally as a "
      "KFP v2 pipeline spec (KubeflowV2DagRunner); `submit` starts a run of it.")
  kubeflow_commands = kubeflow.add_subparsers(dest="kubeflow_command", required=True,
                                              metavar="ACTION")
  compile_ = kubeflow_commands.add_parser(
      "compile", help="write the KFP v2 pipeline spec (YAML)",
      description="Compile the pipeline with KubeflowV2DagRunner into a KFP v2 PipelineSpec "
      "YAML: every step in IMAGE with CPU/memory limits, the Trainer (and Tuner) with "
      "GPUs (config `kubeflow`), Beam steps with the chosen Beam flags, and `data_root` "
      "as a pipeline parameter.")
  compile_.add_argument("--out", required=True, help="pipeline spec to write (.yaml)")
  compile_.add_argument("--image", required=True,
                        help="the pipeline image (kubeflow/Dockerfile), e.g. "
                        "registry.example.com/histopipe:0.1.0")
  compile_.add_argument("--pipeline-root", required=True,
                        help="artifact root the cluster can write, e.g. gs://bucket/histopipe")
  compile_.add_argument("--data-root",
                        help="default of the data_root parameter (the slides and labels); "
                        "without it every run must pass --param data_root=...")
  compile_.add_argument("--serving-dir",
                        help="where the Pusher writes <version>/ for TF Serving "
                        "(default PIPELINE_ROOT/serving_model)")
  _add_config_arguments(compile_, default_preset="full")
  compile_.add_argument("--format", choices=["panda", "pcam", "idc"],
                        help="dataset layout (default: the config's)")
  compile_.add_argument("--beam-preset", choices=["direct", "dataflow", "flink", "spark"],
                        help="Beam flags for SlideExampleGen, StatisticsGen, Transform and "
                        "Evaluator (default: the config's beam_pipeline_args)")
  compile_.add_argument("--beam-arg", action="append", metavar="FLAG",
                        help="Beam flag, repeatable (--beam-arg=--project=p or "
                        "--beam-arg='--project p'): replaces the preset's value of a "
                        "single-valued flag, adds to a list flag such as --experiments")
  compile_.set_defaults(handler=_kubeflow_compile)
  submit = kubeflow_commands.add_parser(
      "submit", help="start a run of a compiled pipeline on a KFP API server",
      description="kfp.Client().create_run_from_pipeline_package: prints the run id and "
      "URL; exits with status 2 and a clear message when the host is unreachable, a "
      "parameter is unknown, or the server refuses the run.")
  submit.add_argument("--host", required=True,
                      help="KFP API endpoint, e.g. http://localhost:8080 after "
                      "`kubectl port-forward -n kubeflow svc/ml-pipeline-ui 8080:80`")
  submit.add_argument("--package", required=True, help="the compiled pipeline spec")
  submit.add_argument("--experiment", default="histopipe",
                      help="experiment name, created if missing (default histopipe)")
  submit.add_argument("--param", action="append", metavar="NAME=VALUE",
                      help="pipeline parameter, repeatable (e.g. data_root=gs://b/panda)")
  submit.add_argument("--run-name", help="run name (default: package name and time)")
  submit.add_argument("--timeout", type=float, default=10.0,
                      help="seconds to wait for the host to answer (default 10)")
  submit.set_defaults(handler=_kubeflow_submit)
  run_local = kubeflow_commands.add_parser(
      "run-local", help="run a compiled pipeline here, task by task, as KFP would",
      description="Execute a compiled KFP v2 package on this machine the way the KFP v2 "
      "backend does: for each task in dependency order, build the ExecutorInput from the "
      "pipeline parameters and upstream outputs, put it into the task's container command "
      "and args, and run exactly that command in this Python environment (the image's). "
      "Importers are resolved as KFP does; resolver tasks, sub-DAGs, conditions and loops "
      "are refused before anything runs. Try a package here before submitting it.")
  run_local.add_argument("--package", required=True, help="the compiled pipeline spec")
  run_local.add_argument("--param", action="append", metavar="NAME=VALUE",
                         help="pipeline parameter, repeatable, typed as the package "
                         "declares it (e.g. data_root=/data/panda)")
  run_local.add_argument("--out", default="kfp-run-local",
                         help="folder for each task's log, executor input and output "
                         "(OUT/<run id>/<task>/) and the cache index (default "
                         "./kfp-run-local)")
  run_local.add_argument("--pipeline-root",
                         help="artifact root (default: the package's defaultPipelineRoot)")
  run_local.add_argument("--run-id", help="run id (default run-local-<date>-<time>)")
  run_local.add_argument("--no-cache", action="store_true",
                         help="run every task, even one whose cache key matches an earlier "
                         "execution (KFP's step cache, emulated; on by default as in KFP)")
  run_local.set_defaults(handler=_kubeflow_run_local)

  serve_dev = commands.add_parser(
      "serve-dev", help="a development Predict server over a SavedModel (not TF Serving)",
      description="Serve TF Serving's gRPC PredictionService (Predict, GetModelMetadata) "
      "and optionally its REST predict over one SavedModel, for machines without TF "
      "Serving. Production uses the TF Serving image (kubeflow/serving/).")
  serve_dev.add_argument("--model-dir", required=True,
                         help="a SavedModel, or the Pusher's serving base (latest version)")
  serve_dev.add_argument("--port", type=int, default=8500, help="gRPC port (default 8500)")
  serve_dev.add_argument("--rest-port", type=int, help="also serve REST on this port")
  serve_dev.add_argument("--model", default="histopipe", help="model name (default histopipe)")
  serve_dev.add_argument("--host", default="localhost", help="address to bind (default localhost)")
  serve_dev.set_defaults(handler=_serve_dev)
  return parser


def main(argv: Optional[List[str]] = None) -> int:
  args = build_parser().parse_args(argv)
  try:
    return args.handler(args)
  except UserError as e:
    command = " ".join(filter(None, [args.command, getattr(args, "kubeflow_command", None)]))
    print(f"histopipe {command}: error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
