"""TFX's Pusher, made idempotent: a model already in the serving folder is not pushed again.

Why: the Evaluator's baseline comes from the latest-blessed-model resolver, so
the run after a model is blessed sees a new input (that model as its own
baseline) and evaluates and blesses the same model again; TFX's Pusher would
then copy it under a new version number, and TF Serving would reload an
identical model. This executor compares the model with the versions already
pushed (the bytes of `saved_model.pb` and of the variables) and, when one is
the same, records that version as this push instead of copying.
"""
