"""Slide reading, tissue detection, tiling and previews: pure pixels, no TFX
and no TensorFlow, shared by SlideExampleGen and the serving client."""
