"""`histopipe kubeflow compile | submit | run-local`: the pipeline as a KFP v2
package, a run of it on a cluster, and a run of it here task by task."""

from __future__ import annotations

from histopipe.cli.arguments import (config_from_args, add_config_arguments)


def _kubeflow_compile(args) -> int:
  from histopipe.core import storage
  from histopipe.kubeflow.compile import compile_pipeline, with_beam_args
  data_format = args.format
  if not data_format and args.data_root and not storage.is_url(args.data_root):
    data_format = "auto"  # a local folder: its own format, as `run` finds it
  config = with_beam_args(config_from_args(args, data_format), args.beam_preset,
                          args.beam_arg or [])
  compile_pipeline(config, args.out, image=args.image, pipeline_root=args.pipeline_root,
                   data_root=args.data_root, serving_model_dir=args.serving_dir)
  default = f"default {args.data_root}" if args.data_root else "no default: set it per run"
  print(f"wrote {args.out}: KFP v2 pipeline spec, image {args.image}\n"
        f"  Trainer: {_trainer_pod(config.kubeflow)}\n"
        f"  parameter data_root: {default}")
  return 0


def _trainer_pod(kubeflow) -> str:
  """'1 x nvidia.com/gpu, 8 CPU (request 8), 32 GB (request 32); node
  nvidia.com/gpu.product=NVIDIA-L4; tolerates nvidia.com/gpu': what a
  cluster must offer the Trainer's pod."""
  from histopipe.kubeflow.scheduling import kubernetes_executor_config
  trainer = kubeflow.trainer
  cpu_request, memory_request = trainer.requests
  said = [f"{trainer.gpus} x {kubeflow.gpu_resource}, "
          f"{trainer.cpu:g} CPU (request {cpu_request:g}), "
          f"{trainer.memory_gb:g} GB (request {memory_request:g})"]
  placement = kubernetes_executor_config(trainer, kubeflow)
  labels = placement.get("nodeSelector", {}).get("labels", {})
  if labels:
    said.append("node " + ", ".join(f"{k}={v}" for k, v in labels.items()))
  tolerated = [t["key"] or "every taint" for t in placement.get("tolerations", [])]
  if tolerated:
    said.append("tolerates " + ", ".join(tolerated))
  return "; ".join(said)


def _kubeflow_submit(args) -> int:
  from histopipe.kubeflow.submit import parse_params, submit
  run = submit(args.host, args.package, experiment=args.experiment,
               params=parse_params(args.param or []), run_name=args.run_name,
               timeout_s=args.timeout)
  print(f"run id: {run.run_id}\nexperiment: {run.experiment}\nurl: {run.url}")
  return 0


def _kubeflow_run_local(args) -> int:
  from histopipe.kubeflow.package_spec import parse_params
  from histopipe.kubeflow.run_local import run_package
  run = run_package(args.package, args.out, parameters=parse_params(args.param or []),
                    pipeline_root=args.pipeline_root or "", run_id=args.run_id or "",
                    use_cache=not args.no_cache)
  cached = [task.name for task in run.tasks if task.cached]
  print(f"run id: {run.run_id}\n{len(run.tasks) - len(cached)} of {len(run.tasks)} tasks ran"
        + (f" ({', '.join(cached)} from the cache)" if cached else "")
        + f"; artifacts: {run.run_root}\nlogs, executor inputs and outputs: {run.work_dir}")
  return 0


def add_commands(commands) -> None:
  """kubeflow compile, submit, run-local"""
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
  add_config_arguments(compile_, default_preset="full")
  compile_.add_argument("--format", choices=["auto", "panda", "pcam", "idc"],
                        help="dataset layout: panda, pcam or idc, or auto (detected from "
                        "--data-root, which must then be a local folder). Default: detected "
                        "from --data-root when it is a local folder, else the config's "
                        "data.format (the presets: panda)")
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
