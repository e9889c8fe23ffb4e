"""SlideExampleGen: a file-based TFX ExampleGen that turns slides into bags.

Beam stages, none of which imports TensorFlow: ListSlides (labels joined with
slide files, checked before any tiling) -> TileSlides (beam/slide_stages.py:
one serialized bag per slide, keyed by its patient, or a reject with its reason)
-> SplitByPatient (the hash of `patient_id` TFX's own ExampleGen uses, on the
id the stage already has instead of on parsed Examples) -> one TFRecord file
set per split. The records are not gzipped: the tiles are PNG/JPEG already, so
gzip saved 2.5% of the bytes for as much time as the tiling itself; TFX's
readers tell compression by the file name (no `.gz`: none).

Every input slide (a labelled id or a slide file) ends up either as a bag or
as a row of `slide_report/rejects.csv` inside the Examples artifact; the
counts are stored as custom properties of that artifact and as Beam counters.

The driver fingerprints the inputs through core/storage (local or a bucket):
the label file and every slide, by size and modification time. With the
tiling settings in the execution properties, a cached ExampleGen is reused
exactly as long as neither changed.
"""
