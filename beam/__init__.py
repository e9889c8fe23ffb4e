"""The Beam stages that tile slides (SlideExampleGen, `histopipe tile`, batch
scoring) and the Beam flags, sinks and bucket connection they share."""
