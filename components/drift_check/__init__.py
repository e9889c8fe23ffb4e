"""DriftCheck: this run's bags against those the baseline model was trained on.

Between the Evaluator and the Pusher. Inputs: this run's Examples, the
Evaluator's baseline (the latest blessed model locally, the served model on
Kubeflow) and the Evaluator's blessing. It compares the bag image statistics
of all this run's splits with the training statistics the baseline model
carries (monitoring/drift.py), writes the report (`drift.json`) and this
run's statistics (`statistics.pb`), and passes the Evaluator's blessing on
to the Pusher: unchanged, or withheld when the run drifted and
`evaluation.block_on_drift` is set.

Why a blessing of its own rather than a second input to the Pusher: TFX's
Pusher pushes on one blessing; deciding here keeps the stock Pusher, and the
latest-blessed-model resolver reads the final verdict (its blessing channel
is this step's output), so a model held back for drift is never a baseline.
"""
