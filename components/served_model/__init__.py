"""The Evaluator's baseline: the model being served, taken from the serving folder.

Why not TFX's latest-blessed-model Resolver: open-source Kubeflow Pipelines
refuses resolver tasks (its Argo compiler answers "resolver executors not
implemented"; only Vertex AI runs them), so a package holding one cannot run
there at all. The newest version in the Pusher's folder is the last model this
pipeline blessed (the Pusher pushes blessed models only) and the one TF
Serving answers requests without a version or label with, so it is the
baseline a new model must not fall behind. (Where an operator routes traffic
by the `stable` label of kubeflow/serving/models.config, the newest push may
be a canary not yet promoted: the comparison is then with the canary.) `ServedModel` copies it into a Model artifact (traced in ML Metadata
like any other input); before anything is served the artifact is empty and
`BaselineEvaluator` evaluates without a baseline, as TFX does with an empty
resolver. The step reads state outside the pipeline, so it must never be
cached: `kubeflow/compile.py` removes its caching options (`NEVER_CACHED`);
the local runner keeps TFX's resolver instead.
"""
