"""ModelCard: `model_card.json` and `model_card.html` for each pushed model.

After the Pusher. The card says what the model was trained on (slides per
split and data provider, rejected slides and why), what it is (backbone,
pooling, head, tiling, preset), how it did (TFMA's metrics overall and per
provider, with the gate's thresholds), whether its inputs drifted
(DriftCheck), which slides it refers (the referral threshold and coverage
from its contract), what it is for and not for (synthetic data said
plainly), and where it came from (ML Metadata ids of every input and the
pipeline run). Written into the step's artifact and, when the model was
pushed, next to the pushed version (`<serving dir>/<version>/model_card.*`:
TF Serving loads only the SavedModel and ignores them).

Why not model-card-toolkit: no release installs beside our pins (2.0.0, the
last, requires absl-py < 1.1, jsonschema < 4 and TFMA < 0.42; earlier ones pin
TFX < 1.6; apache-beam 2.59 needs jsonschema >= 4), and the project is
archived. The JSON follows its schema (v0.0.2, `model_card.schema.json`
beside this file, Apache-2.0, from model-card-toolkit 2.0.0) and is
validated against it with jsonschema before it is written; histopipe's own
details sit in extra fields of the schema's objects, which it allows.
"""
