"""Slides in, one prediction record per slide out, through any Predict client.

Tiling is `slides.tiling.cut_bag`, the code SlideExampleGen runs, with
the pipeline's TilingConfig, so the served model sees the tiles it was
trained on. A slide that cannot be tiled becomes a "rejected" record with its
reason; a server that cannot be reached at the start stops the run
(ServingError), one that goes away during it costs each slide its retries,
then the slide is a rejected record; after `BREAKER_FAILURES` slides in a
row got no answer, the rest are rejected without waiting on their retries
(the server is gone: each record says so, and `predict` exits 1).
"""

from __future__ import annotations

import csv
import json
import threading
from concurrent import futures
from typing import Any, Dict, Iterable, Iterator, List, NamedTuple, Optional, TextIO, Union

import numpy as np

from histopipe.bags import bag_features
from histopipe.slides import dicom_reader
from histopipe.bags.bag_features import SlideBag
from histopipe.data.datasets import PATCH_SUFFIXES, image_id_from_path
from histopipe.slides.base import SLIDE_SUFFIXES as READER_SUFFIXES, SlideError
from histopipe.slides.tiling import cut_bag
from histopipe.core import referral, signatures
from histopipe.core.configs import PATCH_FORMATS, PipelineConfig
from histopipe.core import storage
from histopipe.core.errors import UserError
from histopipe.core.progress import progress_bar
from histopipe.monitoring import slide_skew
from histopipe.serving.client import MAX_CONCURRENCY, ServingError

# What a folder given to predict/score is searched for: slides of every type
# the readers take, and patches.
SLIDE_SUFFIXES = READER_SUFFIXES + PATCH_SUFFIXES
# Submission-style CSV headers: PANDA's and PCam's (Kaggle) column names.
CSV_HEADER = {"isup": ("image_id", "isup_grade"), "binary": ("id", "label")}
# Slides in a row the server failed (after their retries) before the rest
# are not sent: a server gone for good would cost every remaining slide its
# whole retry budget (minutes each with the default deadline).
BREAKER_FAILURES = 3
# What a rejected record's reason starts with when the server, not the slide, failed.
SERVER_FAILED = "server: "
# Why `predict` leaves each record's `out_of_range` null: the training
# statistics stay in the model folder (assets.extra/), which TF Serving's
# Predict API does not serve; `score` reads them there.
NOT_CHECKED_BY_PREDICT = ("the served model's contract carries no training ranges: a model "
                          "exported before they were; histopipe score checks each slide "
                          "against the statistics in its folder")


class ServerBreaker:
  """Counts slides in a row the server failed; open after `limit` of them.

  Hand-written rather than a circuit-breaker package: it never closes again
  on a timer (a batch job has no later traffic to probe with), so it is a
  counter under a lock, shared by the threads of `--concurrency`."""

  def __init__(self, limit: int = BREAKER_FAILURES):
    self._limit, self._failures, self._last = limit, 0, ""
    self._lock = threading.Lock()

  def failed(self, reason: str) -> None:
    with self._lock:
      self._failures += 1
      self._last = reason

  def answered(self) -> None:
    with self._lock:
      self._failures = 0

  def refusal(self) -> Optional[str]:
    """The reason to reject a slide without sending it, or None to send it."""
    with self._lock:
      if self._failures < self._limit:
        return None
      return (f"not sent: the last {self._failures} slides got no answer from the "
              f"server ({self._last})")


def find_slides(paths: Iterable[str]) -> List[str]:
  """Files as given; folders searched recursively for slide/patch files (a
  DICOM slide once: by its folder when the series is alone in it), and a
  folder of DICOM instances given itself is one slide. Local paths or bucket URLs (core/storage). A path that does not
  exist is the user's mistake: UserError."""
  found = []
  for path in paths:
    if not storage.exists(path):
      raise UserError(f"{path}: no such slide file or folder")
    if storage.is_url(path) or not dicom_reader.is_dicom_folder(path):
      if storage.isdir(path):
        found.extend(dicom_reader.one_file_per_slide(storage.find(path, SLIDE_SUFFIXES),
                                                       root=path))
        continue
    found.append(path)
  return found


def prediction_record(image_id: str, bag: SlideBag, outputs: Dict[str, np.ndarray],
                      referral_settings: Optional[dict] = None,
                      training_ranges: Optional[Dict[str, Dict[str, float]]] = None) -> dict:
  """One slide's outputs (batch of one) as a JSON-ready record; attention per
  real tile with its level-0 position and size; the prediction's uncertainty
  and, when the model carries a referral threshold, whether to refer it; the
  bag's image statistics and those outside the model's `training_ranges`
  (slide_skew.training_ranges; `out_of_range` null when not given)."""
  attention = np.asarray(outputs[signatures.ATTENTION]).reshape(-1)
  probabilities = np.asarray(outputs[signatures.PROBABILITIES]).reshape(1, -1)
  grade = int(np.asarray(outputs[signatures.GRADE]).reshape(-1)[0])
  # One probability: P(label 1) of a binary model; else one per ISUP grade.
  task = "binary" if probabilities.shape[1] == 1 else "isup"
  uncertain = float(referral.uncertainty(probabilities, [grade], task)[0])
  refer = ({"refer": bool(referral.refer(uncertain, referral_settings["threshold"]))}
           if referral_settings else {})
  side = round(bag.tile_size * bag.level_downsample)
  tiles = [{"x": int(x), "y": int(y), "size": side, "weight": round(float(w), 6)}
           for x, y, valid, w in zip(bag.tile_x, bag.tile_y, bag.tile_valid, attention) if valid]
  image_stats = {name: round(float(value), slide_skew.RECORD_DECIMALS)
                 for name, value in bag.image_stats.items()}
  return {"image_id": image_id,
          "grade": grade,
          "probabilities": [round(float(p), 6) for p in probabilities.reshape(-1)],
          "uncertainty": round(uncertain, 6), **refer,
          "attention": tiles,
          # The bag's image statistics (colour, stain, focus...): what the
          # skew check compares with the model's training bags.
          "image_stats": image_stats,
          # Which of them lie outside what the model was trained on: the
          # check a single slide allows (the batch check needs many bags).
          slide_skew.OUT_OF_RANGE: slide_skew.out_of_range(image_stats, training_ranges)}


class SlideRequest(NamedTuple):
  """A slide tiled for the model: its bag and the serialized request bag."""
  image_id: str
  bag: SlideBag
  example: bytes


def cut_request(path: str, config: PipelineConfig) -> Union[SlideRequest, dict]:
  """The slide's request, or its rejected record {"image_id", "path", "rejected": reason}."""
  image_id = image_id_from_path(path)
  kind = "patch" if config.data.format in PATCH_FORMATS else "slide"
  try:
    bag = cut_bag(path, kind, config.tiling).bag
  except SlideError as e:
    return {"image_id": image_id, "path": path, "rejected": e.reason}
  except Exception as e:  # one unreadable slide must not end the run
    return {"image_id": image_id, "path": path,
            "rejected": f"unexpected {type(e).__name__}: {e}"}
  return SlideRequest(image_id, bag, bag_features.serialize_request(bag, image_id))


def predict_in_chunks(client, bag: SlideBag, chunk_tiles: int) -> Dict[str, np.ndarray]:
  """A model on a frozen encoder's outputs for a bag too large for one
  request: its real tiles `chunk_tiles` at a time to embed_tiles, then all
  their embeddings to predict_embeddings. Attention comes back per tile of
  the bag (0 for padding), as serving_default gives it."""
  real = [index for index, valid in enumerate(bag.tile_valid) if valid]
  tiles = np.array([bag.tiles[index] for index in real], dtype=object)
  embeddings = np.concatenate([
      client.predict({signatures.TILES: tiles[start:start + chunk_tiles]},
                     signature=signatures.EMBED_TILES)[signatures.EMBEDDINGS]
      for start in range(0, len(tiles), chunk_tiles)]).astype(np.float32)
  outputs = client.predict({signatures.EMBEDDINGS: embeddings},
                           signature=signatures.PREDICT_EMBEDDINGS)
  attention = np.zeros([1, len(bag.tile_valid)], np.float32)
  attention[0, real] = np.asarray(outputs[signatures.ATTENTION]).reshape(-1)
  return {**outputs, signatures.ATTENTION: attention}


def predict_one(path: str, client, config: PipelineConfig,
                breaker: Optional[ServerBreaker] = None,
                referral_settings: Optional[dict] = None,
                training_ranges: Optional[Dict[str, Dict[str, float]]] = None,
                chunk_tiles: int = 0) -> dict:
  """The slide's record: its prediction, or {"image_id", "path", "rejected":
  reason} when it cannot be tiled or the server did not answer (after the
  client's retries): no slide is lost to a server that went away. With a
  `breaker` open, the slide is rejected without being sent. `chunk_tiles`
  (a model on a frozen encoder only; 0: never): a bag of more real tiles is
  sent in chunks (predict_in_chunks)."""
  breaker = breaker or ServerBreaker()
  refusal = breaker.refusal()  # before tiling: a gone server should not cost a slide's tiling
  if refusal:
    return {"image_id": image_id_from_path(path), "path": path,
            "rejected": SERVER_FAILED + refusal}
  request = cut_request(path, config)
  if not isinstance(request, SlideRequest):
    return request
  try:
    if chunk_tiles and sum(request.bag.tile_valid) > chunk_tiles:
      outputs = predict_in_chunks(client, request.bag, chunk_tiles)
    else:
      outputs = client.predict({signatures.EXAMPLES: np.array([request.example],
                                                              dtype=object)})
  except ServingError as e:
    reason = str(e)
  except Exception as e:  # pylint: disable=broad-except (a proxy's page, a reset stream: one slide's)
    reason = f"unexpected {type(e).__name__}: {e}"
  else:
    breaker.answered()
    try:
      return prediction_record(request.image_id, request.bag, outputs, referral_settings,
                               training_ranges)
    except Exception as e:  # pylint: disable=broad-except (an answer without the outputs: one slide's)
      return {"image_id": request.image_id, "path": path,
              "rejected": f"{SERVER_FAILED}unexpected answer ({type(e).__name__}: {e})"}
  breaker.failed(reason)
  return {"image_id": request.image_id, "path": path, "rejected": SERVER_FAILED + reason}


def predict_slides(paths: List[str], client, config: PipelineConfig,
                   progress: bool = False, concurrency: int = 1,
                   referral_settings: Optional[dict] = None,
                   training_ranges: Optional[Dict[str, Dict[str, float]]] = None,
                   chunk_tiles: int = 0) -> Iterator[dict]:
  """A record per path, in the order of `paths`; `concurrency` slides are
  tiled and in flight at once (threads: the decoders, the model server and
  the network wait without the GIL; gRPC channels are thread-safe, and the
  REST client's connection pool holds as many connections as threads)."""
  if not 1 <= concurrency <= MAX_CONCURRENCY:
    raise UserError(f"--concurrency {concurrency}: from 1 to {MAX_CONCURRENCY} slides in flight")
  counter = progress_bar("predicting", len(paths), enabled=progress)
  breaker = ServerBreaker()
  try:
    if concurrency == 1:
      for path in paths:
        yield predict_one(path, client, config, breaker, referral_settings, training_ranges,
                          chunk_tiles)
        counter.update()
    else:
      with futures.ThreadPoolExecutor(concurrency, thread_name_prefix="predict") as pool:
        for record in pool.map(
            lambda path: predict_one(path, client, config, breaker, referral_settings,
                                     training_ranges, chunk_tiles), paths):
          yield record
          counter.update()
  finally:
    counter.close()


def write_records(records: Iterable[dict], out: TextIO, csv_file: Optional[TextIO],
                  task: str) -> Dict[str, Any]:
  """JSON lines to `out`; predictions also as `image_id,isup_grade` (or
  `id,label`) rows to `csv_file`. Returns counts of predicted and rejected,
  of the rejected those the server failed ("server_failed"), and the
  per-slide skew of the predicted (slide_skew.summarize, "per_slide_skew")."""
  writer = csv.writer(csv_file) if csv_file else None
  if writer:
    writer.writerow(CSV_HEADER[task])
  counts: Dict[str, Any] = {"predicted": 0, "rejected": 0, "server_failed": 0, "referred": 0}
  checked = []  # each predicted record's verdict alone: records are not kept
  for record in records:
    out.write(json.dumps(record) + "\n")
    out.flush()
    if "rejected" in record:
      counts["rejected"] += 1
      counts["server_failed"] += record["rejected"].startswith(SERVER_FAILED)
      continue
    counts["predicted"] += 1
    counts["referred"] += bool(record.get("refer"))
    checked.append({slide_skew.OUT_OF_RANGE: record.get(slide_skew.OUT_OF_RANGE)})
    if writer:
      writer.writerow([record["image_id"], record["grade"]])
  counts["per_slide_skew"] = slide_skew.summarize(checked)
  return counts


def predict_to(paths: List[str], client, config: PipelineConfig, out: TextIO,
               csv_path: str = "", progress: bool = False,
               concurrency: int = 1, referral_settings: Optional[dict] = None,
               training_ranges: Optional[Dict[str, Dict[str, float]]] = None,
               chunk_tiles: int = 0) -> Dict[str, Any]:
  """`histopipe predict`: checks that the server has the model and signature
  before tiling anything, then writes a JSON line per slide to `out` (and the
  submission CSV to `csv_path`). Returns counts of predicted, rejected and
  referred."""
  client.signatures()
  records = predict_slides(paths, client, config, progress=progress, concurrency=concurrency,
                           referral_settings=referral_settings, training_ranges=training_ranges,
                           chunk_tiles=chunk_tiles)
  if not csv_path:
    return write_records(records, out, None, config.task)
  with open(csv_path, "w", newline="") as csv_file:
    return write_records(records, out, csv_file, config.task)
