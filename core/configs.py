"""Every setting of the pipeline, in one typed place, at the bottom of the package.

The CLI, the local runner, the Kubeflow compiler, the SlideExampleGen executor
and the trainer module all read these dataclasses; nothing is copied between
files, and this module imports no other part of histopipe. Presets: `demo`
(fits `make demo` on a 2-core CPU) and `full` (PANDA-like: 36 tiles of 256 px
from the middle level, 224 px model input). A JSON file given with `--config`
overrides any field of a preset:

    {"preset": "demo", "training": {"epochs": 30}, "tiling": {"tiles_per_slide": 12}}

The classes are pydantic dataclasses in strict mode: a value of the wrong type
(`"epochs": "ten"`, `"epochs": 2.5`), an unknown field or an unknown choice
fails when the config is loaded, with the field's path, instead of deep inside
a Beam worker or the Trainer. They stay standard dataclasses otherwise
(`dataclasses.replace`, `asdict`, frozen, hashable), and `replace` validates too.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Annotated, Any, Dict, Literal, Optional, Tuple

import pydantic
from pydantic import ConfigDict, TypeAdapter, ValidationError

from histopipe.core.errors import UserError

ISUP_GRADES = 6  # ISUP grade group 0 (benign) .. 5
# Datasets of small patches with a 0/1 label: each patch is a bag of one tile.
PATCH_FORMATS = ("pcam", "idc")
DATA_FORMATS = ("panda",) + PATCH_FORMATS


class ConfigError(UserError, ValueError):
  """A config that cannot be used; the message names the field and what is wrong."""


# Strict: no silent coercion ("10" is not 10); unknown fields are errors.
_STRICT = ConfigDict(extra="forbid", strict=True)


def _settings(cls):
  """A frozen dataclass whose fields pydantic checks on every construction."""
  return pydantic.dataclasses.dataclass(frozen=True, config=_STRICT)(cls)


@_settings
class TilingConfig:
  """How SlideExampleGen cuts a slide into a bag of tiles."""
  # The N tiles with most tissue; 0: every tile with at least
  # min_tissue_fraction, most tissue first, up to max_tiles (bags of as many
  # tiles as the slide has tissue, for a frozen encoder: model.encoder).
  tiles_per_slide: Annotated[int, pydantic.Field(ge=0)] = 16
  # With tiles_per_slide 0, the most a bag takes; the slide report counts the
  # tissue tiles left out. 4,096 JPEG tiles of 256 px are ~80 MB a bag.
  max_tiles: Annotated[int, pydantic.Field(gt=0)] = 4096
  tile_size: int = 256  # pixels at the tiling scale
  # The scale tiles are cut at, so slides from different scanners give tiles
  # of the same magnification: `target_mpp` um/px when the slide states a
  # plausible MPP, else `level_downsample` level-0 px per tile px. Default:
  # PANDA's middle level (0.5 um/px x 4 = 2 um/px, about 5x), as in the
  # original ResNet50 MIL approach. 0 turns a rule off.
  target_mpp: float = 2.0
  level_downsample: float = 4.0
  # A level within this factor of the scale is cut as it is (Karolinska's
  # PANDA level 1 is 1.81 um/px); otherwise the nearest finer level is read
  # and shrunk to the scale (single-level slides, pyramids with gaps).
  scale_tolerance: float = 1.25
  # >= 0: cut from the level with this index as it is, whatever its scale.
  level: int = -1
  min_tissue_fraction: float = 0.25  # tiles with less tissue are not taken
  tile_format: Literal["png", "jpeg"] = "png"  # PNG is lossless
  jpeg_quality: int = 90
  # JPEG tiles cut at a level's own scale, inside one JPEG-compressed TIFF
  # tile and on its MCU grid, are copied from the slide's JPEG data without
  # decoding (slides/jpeg_crop.py): the scanner's own quality, not
  # jpeg_quality, and no second generation of JPEG loss. Other tiles are
  # decoded and encoded at jpeg_quality.
  lossless_jpeg_crop: bool = True
  resize_to: int = 0  # 0 keeps tile_size; otherwise tiles are resized to this
  # Slide reader: "auto" picks by the file's content (tifffile for TIFF-family
  # files it reads, OpenSlide for NDPI, MRXS, SCN, BIF, Philips, wsidicom for
  # DICOM WSI files and folders).
  reader: Literal["auto", "tifffile", "openslide", "wsidicom"] = "auto"
  # A TIFF tile or strip that would decode to more bytes is refused before it
  # is decoded (a decompression bomb); a PANDA tile is 0.75 MB.
  max_segment_bytes: int = 256 * 2**20
  # A level read whole (for the tissue thumbnail: the smallest level) may have
  # at most this many pixels: 4 Gpx, a single-level 65k x 65k scan.
  max_level_pixels: int = 2**32
  # A slide still being read after this many seconds is rejected (checked
  # between TIFF segments and regions); a read blocked inside one call is
  # abandoned by the job's watchdog at twice this. 0: no limit.
  max_seconds_per_slide: float = 300.0


@_settings
class DataConfig:
  """Where slides and labels are inside the data folder."""
  # panda, pcam, idc, or auto (detected from the folder when the pipeline is
  # built, so only for local folders): see data/datasets.py.
  format: Literal["auto", "panda", "pcam", "idc"] = "panda"
  # PANDA slides: a glob relative to the data folder (or absolute); files of
  # any slide type the readers take (.svs, .ndpi, .tiff, ...). "": the files
  # in train_images/, else those in the data folder itself.
  slide_pattern: str = ""
  labels_file: str = ""  # "" = the format's own (train.csv, train_labels.csv)
  # Hash buckets per split (by patient): the Trainer early-stops on "valid",
  # the Evaluator gates on "eval", which training never saw. 70/15/15.
  train_buckets: int = 14
  valid_buckets: int = 3
  eval_buckets: int = 3


# A frozen encoder's pixel scaling (encoders/frozen.py): "unit" [0, 1] (Path
# Foundation), "symmetric" [-1, 1], "imagenet_caffe" (BGR minus ImageNet's
# means: Keras' ResNet50) or "imagenet_torch" ([0, 1] standardised by
# ImageNet's means and deviations: most PyTorch-trained encoders).
PIXEL_SCALINGS = ("unit", "symmetric", "imagenet_caffe", "imagenet_torch")


@_settings
class EncoderSpec:
  """How a SavedModel or Keras file encoder takes tiles and gives features.
  The defaults are Google's Path Foundation's: 224 x 224 RGB H&E tiles scaled
  to [0, 1], its `serving_default` signature's `output_0` (384 floats)."""
  input_size: Annotated[int, pydantic.Field(gt=0)] = 224
  pixel_scaling: Literal["unit", "symmetric", "imagenet_caffe", "imagenet_torch"] = "unit"
  signature: str = "serving_default"
  output_key: str = "output_0"


@_settings
class ModelConfig:
  """The MIL model: a shared backbone over the tiles of a bag, then pooling."""
  backbone: str = "resnet50"
  input_size: int = 224  # tiles are resized to this before the backbone
  pooling: str = "gated_attention"
  attention_units: int = 128
  dense_units: int = 512
  dropout: float = 0.3
  # The head's normalisation after its dense layer. "layer" (LayerNorm) is
  # per bag, so a replica holding one bag (4 bags over 4 GPUs) trains as a
  # single device would; "batch" (BatchNorm) is over a replica's bags: with
  # one bag its variance is zero.
  head_normalization: Literal["layer", "batch"] = "layer"
  # Binary tasks: "logistic" (the dense layer, its normalisation and dropout,
  # one logit trained on cross-entropy) or "regression", the seeds' IDC head:
  # a dense_units ReLU layer (20 there), then one sigmoid output trained as a
  # regression on the 0/1 label (mean squared error), nothing between them.
  binary_head: Literal["logistic", "regression"] = "logistic"
  # backbone "wide_resnet": WRN-depth-width (trainer/wide_resnet.py), with
  # dropout between each block's convolutions; WRN-16-8 by default.
  wide_resnet_depth: int = 16
  wide_resnet_width: int = 8
  wide_resnet_dropout: float = 0.0
  imagenet_weights: str = ""  # path to a .h5 file, "imagenet" for the Keras cache, "" random
  # Backbone BatchNorm momentum; 0 keeps the backbone's own (0.99). Training
  # from random init on a few hundred steps needs a shorter memory (0.9), or
  # the moving statistics used at eval lag far behind the weights.
  batchnorm_momentum: float = 0.0
  # How many of a bag's tiles the model looks at: the first k (bags are
  # written best tissue first; training's tile shuffle makes them a random k
  # valid tiles each step). 0: all. Attention stays per tile of the bag
  # (0 for the tiles not looked at), so serving outputs keep their shape.
  tiles_used: int = 0
  # A frozen tile encoder in place of the trained backbone: "" (none: the
  # backbone is trained end to end), "resnet50_trunc" (Keras' ResNet50 up to
  # conv4_block6_out, then global average pooling, 1,024 features: CLAM's
  # default; weights from imagenet_weights), or the path (local or a bucket)
  # of a SavedModel folder or a Keras file, taken as encoder_spec says. Its
  # weights are never trained, and the Transform leaves tiles in pixels: the
  # encoder scales them as it was trained to.
  encoder: str = ""
  encoder_spec: EncoderSpec = EncoderSpec()

  def __post_init__(self):
    if self.wide_resnet_depth < 10 or (self.wide_resnet_depth - 4) % 6:
      raise ValueError(f"wide_resnet_depth is 6n + 4 (10, 16, 22, 28, 40); got "
                       f"{self.wide_resnet_depth}")
    if self.wide_resnet_width < 1:
      raise ValueError("wide_resnet_width is at least 1")
    if self.encoder and self.tiles_used:
      raise ValueError("tiles_used looks at the first tiles of a bag the backbone trains on; "
                       "a frozen encoder's head takes every tile: set it to 0")
    if self.encoder and self.pooling == "concat_tile":
      raise ValueError("pooling concat_tile encodes a grid of tiles as one image; a frozen "
                       "encoder takes single tiles: choose another pooling")
    if self.encoder not in ("", "resnet50_trunc") and (
        self.input_size != self.encoder_spec.input_size):
      raise ValueError(f"input_size is {self.input_size} but the encoder takes "
                       f"{self.encoder_spec.input_size} px tiles (encoder_spec.input_size): "
                       "set both to the encoder's")


@_settings
class TrainingConfig:
  # Bags per replica (a GPU, or a logical CPU with cpu_replicas) per step: the
  # global batch is this times the replicas, so adding GPUs keeps each one's
  # share, and no replica is ever left without a bag.
  batch_size: int = 8
  epochs: int = 30
  # 0: one pass over the training split; with class_balance
  # "balanced_sampling" as many bags as the split has, with "undersample"
  # the classes present times the smallest class's count.
  steps_per_epoch: int = 0
  learning_rate: float = 1e-4
  warmup_epochs: int = 1
  # Transfer learning: train the head for this many epochs with the backbone
  # frozen (its BatchNorm in inference mode), then fine-tune everything.
  # Meant for ImageNet weights; 0 fine-tunes from the first epoch.
  frozen_backbone_epochs: int = 0
  eval_batch_size: int = 8
  seed: int = 42
  # Class imbalance (PANDA is skewed to grades 0 and 1): "class_weights"
  # (loss weight total / (classes * count)), "balanced_sampling" (every
  # class equally often: rejection sampling of one endless stream, rare
  # bags repeat within an epoch), "undersample" (each epoch a new random
  # subset of every class, of the smallest class's size, as imbalanced-learn's
  # RandomUnderSampler) or "none". Counts come from a TFT analyzer over the
  # training split. All read the split once, through one shuffle buffer.
  class_balance: Literal["class_weights", "balanced_sampling", "undersample",
                         "none"] = "class_weights"
  # Training bags the reader holds to shuffle (serialized, as read): this,
  # not the split's size, bounds the input's memory. tfxio's default, 10,000,
  # holds all of PANDA's 7,431 train bags (6 GB as JPEG, 35 GB as PNG,
  # against the Trainer's 32 GB) and refills before every epoch's first
  # step; 256 bags of 0.8 MB (JPEG, `full`) to 4.7 MB (PNG) are 0.2-1.2 GB.
  # The split's shards are read in a new order each epoch, so a buffer of a
  # few ~100-bag shards still mixes the whole split across epochs.
  shuffle_buffer_bags: Annotated[int, pydantic.Field(gt=0)] = 256
  # MirroredStrategy over all of a node's GPUs. On CPU, `cpu_replicas` > 0
  # splits the host CPU into that many logical devices and trains with
  # MirroredStrategy over them: the code an N-GPU node runs, rehearsed before
  # anyone pays for GPUs. 0: one device, no strategy.
  cpu_replicas: int = 0
  # Mixed float16 compute in the training step (float32 variables and
  # outputs): "auto" is on when training on GPUs. The exported model is
  # float32 whatever this says: CPU consumers would pay for float16 casts.
  mixed_precision: Literal["auto", "on", "off"] = "auto"
  # Refuse to train without a GPU (a Kubeflow Trainer given GPUs sets it):
  # a GPU job that silently trains on CPU takes days to notice.
  require_gpu: bool = False


@_settings
class AugmentationConfig:
  """Training-batch augmentation (trainer/augmentation.py); never at eval or serving."""
  flips_and_rotations: bool = True
  shuffle_tiles: bool = True
  colour: bool = True
  brightness: float = 0.08  # additive, on 0..1 pixels
  contrast: float = 0.1  # factor 1 +- this
  saturation: float = 0.1  # factor 1 +- this
  hue: float = 0.02  # additive, in turns of the colour wheel
  hed_sigma: float = 0.03  # HED stain scale 1 +- sigma and shift +- sigma; 0 = off


@_settings
class EvaluationConfig:
  """The Evaluator's gate: quadratic weighted kappa for the ISUP task, ROC
  AUC for binary tasks; a floor, and a largest drop vs the last blessed model."""
  min_kappa: float = 0.3
  max_kappa_drop: float = 0.05
  min_auc: float = 0.7
  max_auc_drop: float = 0.02
  # Input drift (monitoring/drift.py): a bag image statistic whose
  # Jensen-Shannon divergence (TFDV's approximation, on its histograms) from
  # the latest blessed model's training bags exceeds `max_drift_jsd` flags
  # the run, overall and per data provider with at least `min_drift_bags`
  # bags on both sides. Whether a flagged run may push is `block_on_drift`.
  # Two draws of the same slides differ too: measured on synthetic slides,
  # the largest divergence of 11 statistics was 0.21 at 40 bags a side and
  # 0.10 at 80 (a colour-shifted scanner: 0.35 and 0.21), hence 80 and 0.15.
  max_drift_jsd: float = 0.15
  min_drift_bags: int = 80
  block_on_drift: bool = False
  # Referral (core/referral.py): the Trainer picks the uncertainty threshold
  # on the "valid" split at which the accepted slides reach this kappa
  # (ISUP) or AUC (binary) with the largest coverage. The Trainer reads
  # these two, so changing them retrains.
  referral_target_kappa: float = 0.85
  referral_target_auc: float = 0.95


@_settings
class TuningConfig:
  """Optional TFX Tuner before the Trainer: a random search (keras-tuner's
  oracle) over these choices, each trial trained for `epochs` and scored on
  the "valid" split by the Trainer's own selection metric (kappa or AUC).
  The Trainer then trains with the best values for the full `training.epochs`."""
  enabled: bool = False
  max_trials: int = 6
  epochs: int = 3
  learning_rates: Tuple[float, ...] = (1e-4, 3e-4, 1e-3)
  dropouts: Tuple[float, ...] = (0.2, 0.3, 0.5)
  poolings: Tuple[str, ...] = ("gated_attention", "mean", "max")
  tiles_used: Tuple[int, ...] = (0,)  # see ModelConfig.tiles_used; 0 = all


@_settings
class Toleration:
  """A Kubernetes toleration: lets a step's pod onto nodes with a matching
  taint (GPU pools are commonly tainted so that only GPU work lands there).
  Kubernetes' own rules are checked here, when the config is loaded, not
  when the cluster refuses the pod."""
  key: str = ""
  operator: Literal["Equal", "Exists"] = "Equal"
  value: str = ""
  effect: Literal["", "NoSchedule", "PreferNoSchedule", "NoExecute"] = ""
  toleration_seconds: Optional[int] = None  # NoExecute only: how long the pod stays

  def __post_init__(self):
    if self.operator == "Exists" and self.value:
      raise ValueError("a toleration with operator Exists takes no value")
    if self.operator == "Equal" and not self.key:
      raise ValueError("a toleration without a key must have operator Exists")
    if self.toleration_seconds is not None and self.effect != "NoExecute":
      raise ValueError("toleration_seconds needs effect NoExecute")


@_settings
class StepResources:
  """What one pipeline step's pod asks of the cluster on Kubeflow: limits
  (0 = none set), requests (0 = the limit), and where it may be scheduled."""
  cpu: float = 0.0  # cores (limit)
  memory_gb: float = 0.0  # limit
  gpus: int = 0  # of KubeflowConfig.gpu_resource
  # Requests below the limits let the scheduler place the pod on a node with
  # less free; Kubernetes refuses a request above its limit.
  cpu_request: float = 0.0
  memory_request_gb: float = 0.0
  # A GPU model, written as the node selector KubeflowConfig.gpu_model_label
  # = gpu_model (e.g. "NVIDIA-L4" with the GPU operator's label, "nvidia-l4"
  # with GKE's cloud.google.com/gke-accelerator). Steps with gpus only.
  gpu_model: str = ""
  node_selector: Dict[str, str] = dataclasses.field(default_factory=dict)
  tolerations: Tuple[Toleration, ...] = ()

  def __post_init__(self):
    for request, limit, name in ((self.cpu_request, self.cpu, "cpu"),
                                 (self.memory_request_gb, self.memory_gb, "memory_gb")):
      if limit and request > limit:
        raise ValueError(f"a request above its limit ({name} {limit}): Kubernetes refuses "
                         "such a pod")
    if self.gpu_model and not self.gpus:
      raise ValueError("gpu_model is set on a step with no gpus")

  @property
  def requests(self) -> Tuple[float, float]:
    """(cpu, memory GB) requested: the requests given, else the limits."""
    return self.cpu_request or self.cpu, self.memory_request_gb or self.memory_gb


@_settings
class ServingConfig:
  """In-graph batching of the exported model's tile encoder (trainer/encoder_batching.py).

  The backbone's pass over decoded tiles runs inside TensorFlow's
  BatchFunction op, so the tiles of concurrent requests, whatever signature
  they came through, run as one batch; decoding, padding and pooling stay in
  each request's thread (TF Serving's batching guide: batch only the
  accelerator's part of a mixed CPU/GPU model). TF Serving's own
  `--enable_batching` stays off: it batches every signature, and `metadata`
  (no batch dimension) and `predict_tiles` (a bag's tiles as rows) cannot be.
  The defaults are for a GPU replica of the `full` model (bags of 36 tiles);
  the settings travel in the model contract. Sizes count tiles, not bags."""
  batching: bool = True  # False: the encoder runs in each request's thread alone
  # The largest batch the encoder runs. The guide: the largest the hardware
  # takes. ResNet50 at 224 px in float32 keeps about 13 MB of activations a
  # tile at its widest layers: 288 tiles (8 bags) is under 4 GB, well within
  # any serving GPU, and past the batch at which ResNet50 inference stops
  # getting faster per image on current GPUs (128-256).
  max_batch_size: int = 288
  # A batch is padded up to the next of these (the last is max_batch_size).
  # On a GPU each size is one shape for cuDNN's autotuner (it tunes every
  # new shape on first sight, seconds per shape), and padding a batch that
  # does not fill the GPU costs little; multiples of a 36-tile bag pad one
  # bag's request not at all. Empty: any size, no padding (a CPU replica,
  # where every padded tile costs as much as a real one).
  allowed_batch_sizes: Tuple[int, ...] = (36, 72, 144, 288)
  # How long a batch waits to fill. The guide: slightly above zero, e.g. 1 ms,
  # smooths batch sizes at low request rates and keeps the tail latency low.
  batch_timeout_micros: int = 1000
  # Batches in flight at once: 2 lets one batch's host-side work (gathering,
  # padding, the copy to the GPU) overlap the other's compute on one GPU.
  num_batch_threads: int = 2
  # Batches that may wait. A request larger than max_batch_size is split into
  # batches that all wait at once (the Evaluator, `score` and the Trainer's
  # eval predictions send hundreds of bags a call through the same graph),
  # so the queue holds the largest request: 256 x 288 >= max_request_tiles.
  max_enqueued_batches: int = 256
  # The largest request in tiles (TFMA sends up to 1,000 bags a call:
  # 36,000 tiles); a larger one fails with TensorFlow's message.
  max_request_tiles: int = 65536
  # `histopipe predict` sends a bag of more real tiles than this to a model
  # on a frozen encoder in chunks: embed_tiles per chunk, then
  # predict_embeddings on the whole bag's embeddings. A request stays a few
  # MB (512 JPEG tiles of 256 px: ~10 MB; gRPC's default limit is 4 MB a
  # reply, 2 GB a request) and its encoder batch a GPU's size.
  chunk_tiles: Annotated[int, pydantic.Field(gt=0)] = 512

  def __post_init__(self):
    sizes = self.allowed_batch_sizes
    if min((self.max_batch_size, self.batch_timeout_micros + 1, self.num_batch_threads,
            self.max_enqueued_batches, self.max_request_tiles)) < 1:
      raise ValueError("batch sizes, threads, queue length and request size must be "
                       "positive, the timeout not negative")
    if sizes and (list(sizes) != sorted(set(sizes)) or sizes[0] < 1 or
                  sizes[-1] != self.max_batch_size):
      raise ValueError("allowed_batch_sizes must rise, each at least 1, and end with "
                       f"max_batch_size ({self.max_batch_size}); got {list(sizes)}")
    if self.max_request_tiles < self.max_batch_size:
      raise ValueError("max_request_tiles must be at least max_batch_size")
    if self.max_enqueued_batches * self.max_batch_size < self.max_request_tiles:
      raise ValueError(
          f"the queue (max_enqueued_batches {self.max_enqueued_batches} x max_batch_size "
          f"{self.max_batch_size}) cannot hold the largest request (max_request_tiles "
          f"{self.max_request_tiles}): it would be refused as the queue being full")


# GPU pools are commonly tainted nvidia.com/gpu (GKE adds this taint to every
# GPU node pool; the NVIDIA GPU operator's docs taint with it too). A
# toleration only allows a node, never requires one: harmless elsewhere.
GPU_TOLERATIONS = (Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule"),)


@_settings
class KubeflowConfig:
  """What the compiled Kubeflow pipeline asks of the cluster. Beam-based steps
  (SlideExampleGen, StatisticsGen, Transform, Evaluator) run with
  PipelineConfig.beam_pipeline_args (see BEAM_PRESETS)."""
  # The Kubernetes resource name of a GPU (KFP's accelerator type: the open-source
  # driver makes it the name of the container's limit); the node must have the
  # NVIDIA device plugin.
  gpu_resource: str = "nvidia.com/gpu"
  # The node label a step's `gpu_model` selects on: NVIDIA GPU Feature
  # Discovery's (deployed by the GPU operator); on GKE cloud.google.com/gke-accelerator.
  gpu_model_label: str = "nvidia.com/gpu.product"
  # Added to the tolerations of every step given GPUs.
  gpu_tolerations: Tuple[Toleration, ...] = GPU_TOLERATIONS
  trainer: StepResources = StepResources(cpu=8, memory_gb=32, gpus=1)
  tuner: StepResources = StepResources(cpu=8, memory_gb=32, gpus=1)
  # SlideExampleGen, StatisticsGen, Transform, Evaluator: Beam with the DirectRunner
  # inside the step's container unless beam_pipeline_args name another runner.
  beam_step: StepResources = StepResources(cpu=8, memory_gb=32)
  # The TileEmbedder (with model.encoder): a Beam step whose encoder runs
  # on the step's GPU (the DirectRunner in the container, as beam_step).
  embedder: StepResources = StepResources(cpu=8, memory_gb=32, gpus=1)
  light_step: StepResources = StepResources(cpu=1, memory_gb=4)  # SchemaGen, Pusher, ...


@_settings
class EmbeddingConfig:
  """The TileEmbedder (components/tile_embedder/): model.encoder over every
  real tile of every bag, once, through Beam's RunInference."""
  # Tiles per encoder call. RunInference's BatchElements starts at the
  # smallest and grows towards the largest while a batch's time per tile
  # falls (it measures each batch): a GPU gains up to a few hundred 224 px
  # tiles a call, a CPU little past a few dozen.
  min_batch_size: Annotated[int, pydantic.Field(gt=0)] = 16
  max_batch_size: Annotated[int, pydantic.Field(gt=0)] = 256

  def __post_init__(self):
    if self.min_batch_size > self.max_batch_size:
      raise ValueError("min_batch_size is above max_batch_size")


@_settings
class PipelineConfig:
  name: str = "histopipe"
  preset: str = "full"
  data: DataConfig = DataConfig()
  tiling: TilingConfig = TilingConfig()
  model: ModelConfig = ModelConfig()
  training: TrainingConfig = TrainingConfig()
  augmentation: AugmentationConfig = AugmentationConfig()
  evaluation: EvaluationConfig = EvaluationConfig()
  tuning: TuningConfig = TuningConfig()
  kubeflow: KubeflowConfig = KubeflowConfig()
  serving: ServingConfig = ServingConfig()
  embedding: EmbeddingConfig = EmbeddingConfig()
  # Extra Beam flags for every Beam-based component (ExampleGen, StatisticsGen,
  # Transform, Evaluator), e.g. ["--direct_num_workers=2"].
  beam_pipeline_args: Tuple[str, ...] = ("--direct_running_mode=in_memory",
                                         "--direct_num_workers=1")

  @property
  def task(self) -> str:
    """"isup": ordinal ISUP grade 0-5 (PANDA), gated on kappa; "binary": one
    sigmoid (PCam, IDC), gated on AUC. Needs a resolved `data.format`."""
    if self.data.format == "auto":
      raise ValueError("data.format is 'auto': resolve it from the data folder first "
                       "(data.datasets.with_detected_format)")
    return "binary" if self.data.format in PATCH_FORMATS else "isup"

  @property
  def num_classes(self) -> int:
    return 2 if self.task == "binary" else ISUP_GRADES

  @property
  def tiles_per_bag(self) -> int:
    """Patch datasets are bags of one tile; slides give `tiling.tiles_per_slide`
    (0: as many as the slide has tissue tiles)."""
    return 1 if self.data.format in PATCH_FORMATS else self.tiling.tiles_per_slide

  def to_dict(self) -> Dict[str, Any]:
    return dataclasses.asdict(self)

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), sort_keys=True)

  @classmethod
  def from_dict(cls, values: Dict[str, Any]) -> "PipelineConfig":
    return cls.from_json(json.dumps(values))

  @classmethod
  def from_json(cls, text: str) -> "PipelineConfig":
    """Parses and checks a config; raises ConfigError naming every bad field."""
    try:
      return TypeAdapter(cls).validate_json(text)
    except ValidationError as e:
      raise ConfigError(_describe(e)) from None


def check_trainable(config: PipelineConfig) -> None:
  """Settings each right alone that no model trains on together (tiling makes
  the bags the model takes); raises ConfigError. Checked where a pipeline is
  built, not at load: `histopipe tile` may cut bags no model takes."""
  if config.tiling.tiles_per_slide == 0 and not config.model.encoder:
    raise ConfigError("config.tiling.tiles_per_slide 0 (every tissue tile) makes bags of any "
                      "size, which only a frozen encoder's head trains on: set model.encoder, "
                      "or a number of tiles")


def _describe(error: ValidationError) -> str:
  """pydantic's findings as one line: `config.training.epochs: Input should be
  a valid integer (got 'ten'); ...`, unknown fields with the known ones."""
  problems = []
  for problem in error.errors():
    where = ".".join(["config", *(str(part) for part in problem["loc"])])
    if problem["type"] in ("unexpected_keyword_argument", "extra_forbidden"):
      known = _field_names(problem["loc"][:-1])
      problems.append(f"{where}: unknown field; known: {', '.join(known)}")
    else:
      problems.append(f"{where}: {problem['msg']} (got {problem['input']!r})")
  return "; ".join(problems)


def _field_names(location) -> list:
  """The field names of the config section at `location` (a path of field names)."""
  section: Any = PipelineConfig
  for name in location:
    section = type(getattr(section(), name))
  return sorted(f.name for f in dataclasses.fields(section))


# Beam flags for the Beam-based steps, by where they run. The user code reaches
# remote workers through setup.py (--setup_file) or the pipeline image.
BEAM_PRESETS = {
    # Inside the step's container: one process per core.
    "direct": ("--direct_running_mode=multi_processing", "--direct_num_workers=0"),
    "dataflow": ("--runner=DataflowRunner", "--project=YOUR_PROJECT", "--region=YOUR_REGION",
                 "--temp_location=gs://YOUR_BUCKET/tmp", "--setup_file=./setup.py",
                 "--experiments=use_runner_v2"),
    # A Flink or Spark job server reached from the step (Beam's portable runner);
    # workers in the pipeline image via --environment_type=DOCKER.
    "flink": ("--runner=PortableRunner", "--job_endpoint=flink-jobserver:8099",
              "--environment_type=DOCKER", "--environment_config=YOUR_IMAGE"),
    "spark": ("--runner=PortableRunner", "--job_endpoint=spark-jobserver:8099",
              "--environment_type=DOCKER", "--environment_config=YOUR_IMAGE"),
}


# Tuner hyperparameter name -> (config section, field, TuningConfig field
# holding its choices).
TUNED_FIELDS = {
    "learning_rate": ("training", "learning_rate", "learning_rates"),
    "dropout": ("model", "dropout", "dropouts"),
    "pooling": ("model", "pooling", "poolings"),
    "tiles_used": ("model", "tiles_used", "tiles_used"),
}


def with_tuned_values(config: PipelineConfig, values: Dict[str, Any]) -> PipelineConfig:
  """`config` with the Tuner's values in their places (unknown names raise)."""
  unknown = sorted(set(values) - set(TUNED_FIELDS))
  if unknown:
    raise ConfigError(f"unknown hyperparameter(s) {unknown}; known: {sorted(TUNED_FIELDS)}")
  for name, value in values.items():
    section, field, _ = TUNED_FIELDS[name]
    replaced = dataclasses.replace(getattr(config, section), **{field: value})
    config = dataclasses.replace(config, **{section: replaced})
  return config


def full_config() -> PipelineConfig:
  """PANDA-like: 36 tiles of 256 px at downsample 4, resized to 224 for ResNet50."""
  return PipelineConfig(
      preset="full",
      # JPEG q90 rather than PNG: PANDA slides are JPEG already, and for 36
      # tiles of 256 px PNG took 8x the encoding time (70 ms a slide, most of
      # tiling), 6x the bytes (4.7 vs 0.8 MB a bag) and 4x the decoding time
      # in training (1.3 vs 0.3 ms a tile). PNG stays available: lossless.
      tiling=TilingConfig(tiles_per_slide=36, tile_size=256, tile_format="jpeg"),
      model=ModelConfig(backbone="resnet50", input_size=224),
      training=TrainingConfig(batch_size=4, epochs=30, learning_rate=1e-4,
                              frozen_backbone_epochs=2),
      evaluation=EvaluationConfig(min_kappa=0.6, max_kappa_drop=0.02),
      # Off by default; when on: 12, 24 or all 36 tiles per bag among the choices.
      tuning=TuningConfig(tiles_used=(12, 24, 0)),
      beam_pipeline_args=("--direct_running_mode=multi_processing",
                          "--direct_num_workers=0"),
  )


def demo_config() -> PipelineConfig:
  """Fits `make demo` in minutes on 2 CPU cores: 8 tiles of 64 px per bag."""
  return PipelineConfig(
      preset="demo",
      tiling=TilingConfig(tiles_per_slide=8, tile_size=64),
      model=ModelConfig(backbone="resnet50", input_size=64, dense_units=128,
                        attention_units=64, dropout=0.2, batchnorm_momentum=0.9),
      training=TrainingConfig(batch_size=8, epochs=12, learning_rate=1e-3),
      evaluation=EvaluationConfig(min_kappa=0.3, max_kappa_drop=0.1),
      # A CPU replica: no padding (a padded tile costs a CPU as much as a
      # real one), batches of up to 32 bags of 8 tiles.
      serving=ServingConfig(max_batch_size=256, allowed_batch_sizes=()),
  )


PRESETS = {"demo": demo_config, "full": full_config}


def read_overrides(path: str) -> Dict[str, Any]:
  """The JSON object of a `--config` file (fields to override), checked for form."""
  try:
    with open(path) as f:
      overrides = json.load(f)
  except OSError as e:
    raise ConfigError(f"{path}: cannot read the config file ({e.strerror})") from None
  except json.JSONDecodeError as e:
    raise ConfigError(f"{path}: not valid JSON ({e})") from None
  if not isinstance(overrides, dict):
    raise ConfigError(f"{path}: a config file holds a JSON object, not {type(overrides).__name__}")
  return overrides


def config_from_overrides(overrides: Dict[str, Any], preset: str = "demo") -> PipelineConfig:
  """A preset (or the one `overrides` names) with `overrides` applied."""
  overrides = dict(overrides)
  preset = overrides.pop("preset", preset)
  if preset not in PRESETS:
    raise ConfigError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
  return PipelineConfig.from_dict(_merge(PRESETS[preset]().to_dict(), overrides))


def load_config(path: Optional[str] = None, preset: str = "demo") -> PipelineConfig:
  """A preset, optionally overridden by a JSON file (which may name its preset)."""
  return config_from_overrides(read_overrides(path) if path else {}, preset)


def _merge(base: Dict[str, Any], overrides: Dict[str, Any]) -> Dict[str, Any]:
  merged = dict(base)
  for key, value in overrides.items():
    if isinstance(value, dict) and isinstance(merged.get(key), dict):
      merged[key] = _merge(merged[key], value)
    else:
      merged[key] = value
  return merged
