"""`histopipe predict` (a TF Serving model over gRPC or REST), `score` (the
SavedModel in Beam) and `serve-dev` (the development Predict server)."""

from __future__ import annotations

import argparse
import sys
import time

from histopipe.cli.arguments import (model_settings, add_model_settings_arguments)


def _predict(args) -> int:
  from histopipe.monitoring import slide_skew
  from histopipe.serving.client import connect
  from histopipe.serving.slide_predictions import (NOT_CHECKED_BY_PREDICT, find_slides,
                                                   predict_to)
  paths = find_slides(args.slides)
  with connect(args.server, args.model, rest=args.rest, deadline_s=args.deadline,
               retries=args.retries) as client:
    contract = client.contract()
    config = model_settings(args, contract)
    # Records on a terminal show progress themselves; piped, a counter on stderr does.
    counts = predict_to(paths, client, config, sys.stdout, csv_path=args.csv or "",
                        progress=not sys.stdout.isatty(), concurrency=args.concurrency,
                        referral_settings=contract.referral if contract else None,
                        # Each slide against the training ranges the contract carries.
                        training_ranges=contract.training_ranges if contract else None,
                        # A model on a frozen encoder takes large bags in chunks.
                        chunk_tiles=(config.serving.chunk_tiles
                                     if contract and contract.encoder else 0))
  referred = (f", {counts['referred']} of them referred (uncertain)"
              if contract and contract.referral else "")
  print(f"{counts['predicted']} predicted{referred}, {counts['rejected']} rejected of "
        f"{len(paths)}" + (f"; CSV: {args.csv}" if args.csv else ""), file=sys.stderr)
  if "per_slide_skew" in counts:
    print(slide_skew.summary_line(counts["per_slide_skew"], NOT_CHECKED_BY_PREDICT),
          file=sys.stderr)
  # A slide rejected for its own content is an answer; one the server never
  # answered is work left undone, and a run that predicted nothing failed.
  if counts["server_failed"]:
    print(f"{counts['server_failed']} slide(s) got no answer from the server: their records "
          "say why; run predict again on them", file=sys.stderr)
    return 1
  return 0 if counts["predicted"] or not paths else 1


def _score(args) -> int:
  from histopipe.beam.flags import merge_beam_args
  from histopipe.serving.batch_scoring import score_slides
  from histopipe.serving.saved_model import read_contract
  from histopipe.serving.slide_predictions import find_slides
  paths = find_slides([args.data])
  contract = read_contract(args.model_dir)
  config = model_settings(args, contract)
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
  print(skew["per_slide_summary"])
  if skew["drifted"]:
    print("warning: the scored slides differ from the model's training slides (scanner, stain "
          "or focus); check the flagged statistics before trusting the grades", file=sys.stderr)
  return 0


def _positive(text: str) -> int:
  value = int(text)
  if value < 1:
    raise argparse.ArgumentTypeError(f"{text}: at least 1")
  return value


def _serve_dev(args) -> int:
  from histopipe.serving.dev_server import DevServer
  server = DevServer(args.model_dir, args.model, port=args.port, rest_port=args.rest_port,
                     host=args.host, **({"workers": args.workers} if args.workers else {})
                     ).start()
  rest = f", REST on {args.host}:{server.rest_port}" if args.rest_port is not None else ""
  print(f"development server (not TF Serving): model {args.model!r} version "
        f"{server.model.version} from {server.model.path}, gRPC on {args.host}:{server.port}"
        f"{rest}; Ctrl-C stops it", flush=True)
  try:
    server.wait()
  except KeyboardInterrupt:
    server.stop()
  return 0


def add_commands(commands) -> None:
  """predict, score, serve-dev"""
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
  add_model_settings_arguments(predict)
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
  add_model_settings_arguments(score)
  score.add_argument("--beam-arg", action="append", metavar="FLAG",
                     help="Beam flag, repeatable (e.g. --beam-arg=--runner=DataflowRunner): "
                     "replaces the config's value of a single-valued flag, adds to a list "
                     "flag such as --experiments")
  score.set_defaults(handler=_score)

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
  serve_dev.add_argument("--workers", type=_positive, default=None,
                         help="requests run at once (default 64, as many as one client sends)")
  serve_dev.set_defaults(handler=_serve_dev)
