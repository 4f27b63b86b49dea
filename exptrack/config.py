"""Typed, frozen experiment configuration.

A config is plain data: YAML files in ``experiments/`` fill the dataclasses below, at most one
level of ``base:`` inheritance merges a parent file underneath, and ``--set section.key=value``
overrides are type-checked against the field they name. Unknown keys and wrong types are errors
that name the key, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import math
import re
import reprlib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import ConfigError
from .yaml_io import read_yaml_file, yaml_number


@dataclass(frozen=True)
class Bounds:
    """A number field's range, written beside the field (`bounded`) and checked by `validate`
    for every field that has one (None, where a field allows it, is not checked)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False  # > low instead of >= low
    high_open: bool = False  # < high instead of <= high
    note: str = ""  # what a value means, said with the error (e.g. "0 = off")

    def holds(self, value: float) -> bool:
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def text(self) -> str:
        """'>= 1', '> 0', 'in [0, 1)'..."""
        low, high = _end(self.low), _end(self.high)
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {low}"
        assert self.high is not None, "a Bounds has a low or a high end"
        return f"{'<' if self.high_open else '<='} {high}"


def _end(value: float | None) -> str:
    """A range's end as written: whole numbers in full (4294967295, not 4.29497e+09)."""
    return "" if value is None else str(int(value)) if float(value).is_integer() else f"{value:g}"


SEED_MAX = 2**32 - 1  # numpy's and torch's seeds: a negative or larger one failed deep inside them


def bounded(default: Any, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
            lt: float | None = None, note: str = "") -> Any:
    """A config field with its range: ge/gt its lower end (>=, >), le/lt its upper end (<=, <)."""
    bounds = Bounds(low=gt if gt is not None else ge, high=lt if lt is not None else le,
                    low_open=gt is not None, high_open=lt is not None, note=note)
    return field(default=default, metadata={"bounds": bounds})


@dataclass(frozen=True)
class DataConfig:
    root: str = "data/demo"
    # Generate the built-in demo data at `root` when it does not exist yet.
    demo: bool = True
    # "easy": large people on plain backgrounds; "hard": small people in cluttered, shaking
    # scenes, 9 subjects, 10 classes (exptrack/data/demo.py).
    demo_preset: Literal["easy", "hard"] = "easy"
    # None: the preset's own count (easy 12 subjects / 6 classes, hard 9 / 10).
    demo_subjects: int | None = bounded(None, ge=3, note="null: the preset's own count")
    demo_classes: int | None = bounded(None, ge=2, le=16, note="null: the preset's own count")  # 16 demo patterns
    demo_seed: int = bounded(0, ge=0, le=SEED_MAX)
    clip_len: int = bounded(16, ge=1)
    train_stride: int = bounded(8, ge=1)
    eval_stride: int = bounded(16, ge=1)
    frame_size: int = bounded(112, ge=8, note="pixels")
    # Processes that decode videos into the cache at once: 0 = one per core when there are at
    # least PARALLEL_MIN_FRAMES frames to decode (else in this process), 1 = in this process.
    cache_workers: int = bounded(0, ge=0, note="0: one per core for large builds")
    # Random shift of training clip starts (frames), as the original did.
    start_jitter: int = bounded(4, ge=0)
    # Minimum share of a clip's frames that carry its (majority) label; 0 keeps every clip
    # with at least one labelled frame, like the original.
    min_purity: float = bounded(0.0, ge=0, le=1)
    val_fraction: float = bounded(0.2, ge=0, lt=1)
    val_seed: int = bounded(42, ge=0, le=SEED_MAX)
    # Final fit on train + validation subjects (`tune --retrain-best`): nothing is held out, so
    # there is no early stopping, the plateau scheduler follows the training loss, and the model
    # of the last epoch is the model.
    train_on_val: bool = False
    downsample_class1: bool = False
    dominant_class: int = 1
    use_masks: bool = False
    # 1.0 blacks out the background; 0.7 keeps 30% of it visible.
    mask_alpha: float = bounded(1.0, ge=0, le=1)
    use_skeleton_attention: bool = False
    skeleton_sigma: float = bounded(10.0, gt=0)
    # Attention never drops below this weight, so the model still sees context.
    skeleton_floor: float = bounded(0.2, ge=0, le=1)
    keypoint_min_conf: float = bounded(0.3, ge=0, le=1)
    # Frame numbering of label and keypoint CSVs: "auto" = 0-based if frame 0 occurs in the
    # file, else 1-based. Set "0" or "1" when a file may lack its first frame.
    frame_base: Literal["auto", "0", "1"] = "auto"
    # Subject folds (training/groups.py): K >= 2 splits every non-test subject (split.csv's train
    # and val) into K subject-disjoint folds; `exptrack train` then trains K models, each
    # validating on one fold. 0 = off (one validation carve-out, data.val_fraction).
    folds: int = 0
    fold_seed: int = bounded(0, ge=0, le=SEED_MAX)
    # The fold a run validates on (0..folds-1): set by the fold group for each of its runs.
    fold: int | None = None


@dataclass(frozen=True)
class ModelConfig:
    num_classes: int = bounded(17, ge=2)
    # Channel multiplier: 1.0 is the paper's C3D; the demo uses a narrower one.
    width: float = bounded(1.0, gt=0)
    dropout: float = bounded(0.5, ge=0, lt=1)
    dropout_fc: float = bounded(0.3, ge=0, lt=1)
    # Share of each pixel's mean over the clip subtracted before the first convolution: 1 keeps
    # only what moves, 0 is the original's plain frames (models/c3d.py; docs/defaults.md).
    # None (default) = auto, resolved when the config is made: 1.0 without person masks (the
    # room must go), 0.0 with them (masks already removed it; removing the still body too
    # measured worse, bench/RESULTS.md "Recipe").
    static_removal: float | None = bounded(None, ge=0, le=1)
    # Before static removal, shift each frame onto the clip's middle frame (phase correlation,
    # at most 5% of the frame): a shaking camera otherwise leaves every background edge in what
    # static removal keeps (models/stabilize.py). No effect when static_removal is 0.
    stabilize: bool = True
    # Members whose class probabilities the model averages: 1 is one C3D; more only in a model
    # registered by a seed or fold group with train.group_model=ensemble (training/groups.py).
    ensemble: int = bounded(1, ge=1)
    # One more output, "rest", trained on the windows whose frames are mostly background (-1 in
    # the labels): a workout video is mostly rest between sets, and a model without this output
    # calls every rest frame an exercise. A confidence threshold cannot stand in for it (rest
    # recall 0.50 at the threshold that keeps 83% of exercise frames, bench/rest.py). Off in
    # the paper's C3D (experiments/c3d_paper.yaml: 17 outputs).
    rest_class: bool = True

    @property
    def outputs(self) -> int:
        """The network's output count: the exercise classes, then rest (index num_classes) if on."""
        return self.num_classes + int(self.rest_class)

    @property
    def rest_index(self) -> int | None:
        """The rest output's index (num_classes), None without one."""
        return self.num_classes if self.rest_class else None


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = bounded(100, ge=1)
    batch_size: int = bounded(8, ge=1)
    eval_batch_size: int = bounded(16, ge=1)
    num_workers: int = bounded(4, ge=0)
    seed: int = bounded(42, ge=0, le=SEED_MAX)
    # A seed group (training/groups.py): train the config once per seed, as child runs of one
    # parent run that logs their mean, spread and interval. Empty: one run with train.seed.
    seeds: tuple[int, ...] = ()
    # What a seed or fold group registers: "best" = the member whose kept model scored best on
    # validation (tagged with the group's figures); "ensemble" = one model averaging every
    # member's probabilities; "auto" (resolved when the config is made) = ensemble for folds
    # (their members saw different subjects, and "best" would pick by scores on different
    # subjects; measured +11 points over the members' mean on real held-out video, issue 33),
    # best for seed groups.
    group_model: Literal["auto", "best", "ensemble"] = "auto"
    device: str = "auto"
    weighted_sampler: bool = True
    grad_clip: float = bounded(1.0, ge=0, note="0 = off")
    early_stop_patience: int = bounded(10, ge=0, note="0 = no early stopping")  # 0 = no early stopping
    early_stop_min_delta: float = bounded(0.001, ge=0)
    # Model choice and early stopping follow the mean validation mean class accuracy of the last
    # this-many epochs (1 = the single best epoch, the original's rule); training/loop.py.
    selection_window: int = bounded(3, ge=1)
    # Windows with the same score (e.g. validation saturated at 1.000): "val_loss" keeps the one
    # with the lower mean validation loss (a later, more confident model); "first" keeps the first.
    selection_tiebreak: Literal["val_loss", "first"] = "val_loss"
    # Early stopping never stops before this epoch.
    min_epochs: int = bounded(0, ge=0)
    checkpoint_every: int = bounded(10, ge=0)
    keep_checkpoints: int = bounded(3, ge=0)
    # What stays on local disk when a run ends: "resume" = last.pt (resume, more epochs) and
    # best_model.pt; the other checkpoints' weights are the run's logged models, uploaded (about
    # 100 MB of 140 MB per demo run). "all" keeps best_val_loss.pt, best_val_acc.pt and epoch_*.pt too.
    checkpoint_files: Literal["resume", "all"] = "resume"
    # Mixed precision (exptrack/device.py): "auto" = bf16 autocast on GPUs that have it (sm_80+),
    # fp16 autocast with a GradScaler on older GPUs, fp32 on the CPU and MPS; true = a half
    # precision is required (an error where the device has none); "bf16"/"fp16" = that one;
    # false = fp32. The same setting scores the model in every command.
    amp: Literal["auto", True, False, "bf16", "fp16"] = "auto"
    compile: bool = False
    # Recompute BatchNorm statistics over this many training batches before each validation
    # (0 = off, the original behaviour); see training/loop.py:recompute_bn_stats.
    precise_bn_batches: int = bounded(10, ge=0, note="0 = off")
    # channels_last_3d memory for the model and its input: "auto" = the layout measured faster
    # on the device type (device.py:use_channels_last, bench/RESULTS.md), or true/false.
    channels_last: Literal["auto", True, False] = "auto"
    # Read the loss, accuracy and NaN check from the device every this many batches (and at the
    # end of each epoch): one host-device synchronisation per check, none per step. 0 = epoch end only.
    sync_every: int = bounded(50, ge=0, note="0 = epoch end only")
    # After a SIGTERM or SIGINT, wait at most this many seconds for the tracking calls already
    # queued (epochs that finished) before the run ends KILLED; what is left, a resume delivers.
    shutdown_timeout: float = bounded(60.0, ge=0)


@dataclass(frozen=True)
class OptimConfig:
    lr: float = bounded(3e-4, gt=0)
    # "plateau": ReduceLROnPlateau on the validation loss (the original's); "cosine": cosine decay
    # from lr to min_lr over train.epochs, stepped once per epoch.
    scheduler: Literal["plateau", "cosine"] = "plateau"
    weight_decay: float = bounded(1e-5, ge=0)
    plateau_factor: float = bounded(0.5, gt=0, lt=1)
    plateau_patience: int = bounded(5, ge=0)
    min_lr: float = bounded(1e-7, ge=0)


@dataclass(frozen=True)
class LossConfig:
    focal_gamma: float = bounded(2.0, ge=0)
    # Per-class alpha from inverse class frequency of the training clips. Off by default: the
    # balanced sampler (train.weighted_sampler) already balances the batches, and on top of it
    # the weights measured no gain (hard preset, one seed: 0.464 without, 0.466 with,
    # bench/RESULTS.md "Recipe"). The original had them on.
    auto_class_weights: bool = False


@dataclass(frozen=True)
class AugmentConfig:
    enabled: bool = True
    hflip_p: float = bounded(0.5, ge=0, le=1)
    rotation_deg: float = 10.0
    # Zoom in or out by up to this share (0.15: x0.85 to x1.15), and shift by up to this share
    # of the frame in x and y: the person stands elsewhere and at another size in a new room.
    scale: float = bounded(0.0, ge=0, lt=1)
    translate: float = bounded(0.0, ge=0, le=0.5)
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 0.05


@dataclass(frozen=True)
class PathsConfig:
    outputs: str = "outputs"
    cache: str = "outputs/cache"


@dataclass(frozen=True)
class MlflowConfig:
    # Empty: MLflow's own default (MLFLOW_TRACKING_URI, else sqlite:///mlflow.db).
    tracking_uri: str = ""
    experiment: str = "exptrack"
    registered_model: str = "c3d-exercise"
    log_system_metrics: bool = True
    # Upload the resume checkpoint (last.pt, with the optimizer state: about 3x the weights) to
    # the run's artifacts every epoch, so that `train --resume <run id>` works on another machine
    # than the one that trained. Off: checkpoints stay on local disk and only the weights of the
    # logged models are uploaded (docs/commands.md).
    upload_resume_checkpoint: bool = False


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)

    def __post_init__(self) -> None:
        # Settings that default to "auto" get their concrete value here, so that every saved
        # config (params, checkpoints, logged models) says what the model really did.
        if self.train.group_model == "auto":
            chosen: Literal["best", "ensemble"] = "ensemble" if self.data.folds else "best"
            object.__setattr__(self, "train", dataclasses.replace(self.train, group_model=chosen))
        if self.model.static_removal is None:
            # a one-frame clip minus its own mean is all zeros: nothing to remove there
            auto = 0.0 if self.data.use_masks or self.data.clip_len < 2 else 1.0
            object.__setattr__(self, "model", dataclasses.replace(self.model, static_removal=auto))


# Where exptrack's defaults differ from the original scripts: key -> the original's value. Each
# change is measured (bench/recipe.py, docs/defaults.md); experiments/c3d_paper.yaml restores them.
ORIGINAL_VALUES: dict[str, Any] = {
    "loss.auto_class_weights": True,
    "optim.lr": 1e-4,
    "train.precise_bn_batches": 0,
    "train.selection_window": 1,
    "model.static_removal": 0.0,
    "model.stabilize": False,
    "model.rest_class": False,
}

# section name -> its dataclass, in declaration order
SECTIONS: dict[str, type] = typing.get_type_hints(Config)


# ---------------------------------------------------------------------------------------------
# Type checking of single values


def _describe(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(c) for c in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def check_value(key: str, tp: Any, value: Any) -> Any:
    """Return `value` converted to field type `tp`, or raise ConfigError naming `key`."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        text = str(value) if not isinstance(value, bool) else value
        if text in choices:
            return text
        raise ConfigError(f"{key}: {value!r} is not {_describe(tp)}")
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return check_value(key, inner[0], value)
    if origin is tuple:  # tuple[int, ...]: a YAML list, or "0,1,2" from --set / an MLproject param
        return _check_int_tuple(key, value)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(number := yaml_number(value), float):
            return number
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    raise ConfigError(f"{key}: expected {_describe(tp)}, got {type(value).__name__} {reprlib.repr(value)}")


def _check_int_tuple(key: str, value: Any) -> tuple[int, ...]:
    """A list of distinct integers, from a YAML list or a comma-separated string ("" = none)."""
    items = value
    if value is None:  # `--set train.seeds=` (nothing): no group
        return ()
    if isinstance(value, str):
        items = [part.strip() for part in value.strip().strip("[]()").split(",") if part.strip()]
    elif isinstance(value, int) and not isinstance(value, bool):
        items = [value]
    if not isinstance(items, (list, tuple)):
        raise ConfigError(f"{key}: expected a list of integers (e.g. 0,1,2), got {type(value).__name__} "
                          f"{reprlib.repr(value)}")
    out = []
    for item in items:
        if isinstance(item, str) and item.lstrip("-").isdigit():
            item = int(item)
        if not isinstance(item, int) or isinstance(item, bool):
            raise ConfigError(f"{key}: {reprlib.repr(item)} is not an integer (expected a list of integers, e.g. 0,1,2)")
        if not 0 <= item <= SEED_MAX:
            raise ConfigError(f"{key}: {item} is not a seed (0..{SEED_MAX}: what numpy and torch take)")
        out.append(item)
    repeated = sorted({i for i in out if out.count(i) > 1})
    if repeated:
        raise ConfigError(f"{key}: {', '.join(map(str, repeated))} given more than once (each seed trains one run)")
    return tuple(out)


def _section_fields(section: str) -> dict[str, Any]:
    cls = SECTIONS[section]
    return typing.get_type_hints(cls)


# Keys renamed since a config was saved: old "section.key" -> new key in the same section.
RENAMED = {"data.label_frame_base": "frame_base"}
# Keys added since a config was saved whose default changed how a model computes: a saved config
# that lacks one was made before it existed, so it gets the value that reproduces that model.
ADDED_LATER = {"model": {"static_removal": 0.0, "stabilize": False, "rest_class": False}}
# Values whose meaning changed since a config was saved: (section, key, old value) -> the value
# that means what the old one did. train.amp: true meant "bf16 on CUDA, fp32 elsewhere" until
# half precision was chosen by capability; that is "auto" now, and true demands a half precision.
REINTERPRETED = {("train", "amp", True): "auto"}
# What every saved config (a run's config.yaml, a checkpoint's or model's) says it was written as:
# a config without `format` predates it and gets REINTERPRETED; one with it means what it says.
# 2: train.amp true demands a half precision.
CONFIG_FORMAT = 2
# Keys older versions saved that nothing reads any more: dropped when a saved config is loaded.
REMOVED_LATER = {"model": ("name",)}  # model.name: always "c3d", the only network


# What an unknown section or key of a saved config means: exptrack wrote it, so a newer exptrack.
# In one Python process the exptrack imported first serves every model (a model's packaged code
# cannot replace a loaded package), hence the advice.
NEWER_CODE = (f" to the exptrack running here ({Path(__file__).resolve().parent}): a newer exptrack made this model. "
              "Load it in a fresh Python process before anything imports exptrack (its packaged code then runs "
              "it), or upgrade exptrack here")


def _check_mapping(raw: dict[str, Any], where: str, unknown: str = "") -> dict[str, dict[str, Any]]:
    """Validate a nested {section: {key: value}} mapping; return it with converted values.
    `unknown` is added to an unknown section's or key's error (NEWER_CODE for saved configs)."""
    out: dict[str, dict[str, Any]] = {}
    for section, values in raw.items():
        if isinstance(values, dict):
            values = {RENAMED.get(f"{section}.{k}", k): v for k, v in values.items()}
        if section not in SECTIONS:
            raise ConfigError(f"{where}: unknown section {section!r}{unknown} (known: {', '.join(SECTIONS)})")
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"{where}: section {section!r} must be a mapping of keys to values")
        fields = _section_fields(section)
        for key, value in values.items():
            if key not in fields:
                raise ConfigError(
                    f"{where}: unknown key {section}.{key}{unknown} (known in {section}: {', '.join(fields)})"
                )
            try:
                out.setdefault(section, {})[key] = check_value(f"{section}.{key}", fields[key], value)
            except ConfigError as exc:  # name the file (or checkpoint) the value came from
                raise ConfigError(f"{where}: {exc}") from None
    return out


# ---------------------------------------------------------------------------------------------
# Loading


def _read_yaml(path: Path) -> dict[str, Any]:
    data = read_yaml_file(path) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    _saved_format(data, str(path))  # a run's config.yaml given as --config: its values mean what they say today
    return data


def _saved_format(saved: dict[str, Any], where: str) -> int:
    """Pop and check the `format` a saved config was written in: 1 (none: older than the marker)
    up to CONFIG_FORMAT. A higher one was written by a newer exptrack."""
    fmt = saved.pop("format", 1)
    if not isinstance(fmt, int) or isinstance(fmt, bool) or fmt < 1:
        raise ConfigError(f"{where}: format: {fmt!r} is not a config format (1 to {CONFIG_FORMAT})")
    if fmt > CONFIG_FORMAT:
        raise ConfigError(f"{where}: format {fmt} is unknown{NEWER_CODE}")
    return fmt


def _merge(base: dict[str, dict[str, Any]], top: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    merged = {section: dict(values) for section, values in base.items()}
    for section, values in top.items():
        merged.setdefault(section, {}).update(values)
    return merged


def load_yaml_layers(path: str | Path) -> dict[str, dict[str, Any]]:
    """Read an experiment YAML and its optional single `base:` parent, merged and checked."""
    path = Path(path)
    data = _read_yaml(path)
    base_ref = data.pop("base", None)
    layers: dict[str, dict[str, Any]] = {}
    if base_ref is not None:
        base_path = (path.parent / str(base_ref)).resolve()
        if base_path.is_dir():
            raise ConfigError(f"{path}: base: {base_ref} names a folder ({base_path}), not a YAML config file")
        base_data = _read_yaml(base_path)
        if "base" in base_data:
            raise ConfigError(
                f"{base_path}: has its own 'base:'; only one level of inheritance is allowed "
                f"(used as the base of {path})"
            )
        layers = _check_mapping(base_data, str(base_path))
    return _merge(layers, _check_mapping(data, str(path)))


def parse_override(text: str) -> tuple[str, str, Any]:
    """Parse 'section.key=value' into (section, key, checked value)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    dotted, raw = text.split("=", 1)
    dotted = dotted.strip()
    if dotted.count(".") != 1:
        raise ConfigError(f"override {text!r}: key must be section.key, e.g. train.epochs=5")
    section, key = dotted.split(".")
    if section not in SECTIONS:
        raise ConfigError(f"override {dotted}: unknown section {section!r} (known: {', '.join(SECTIONS)})")
    fields = _section_fields(section)
    if key not in fields:
        raise ConfigError(f"override {dotted}: unknown key (known in {section}: {', '.join(fields)})")
    tp = fields[key]
    # Strings are taken verbatim so that e.g. a run name '007' stays a string; everything else
    # goes through YAML so that 1e-4, true and null mean what they do in a config file.
    value: Any = raw if tp is str else yaml.safe_load(raw) if raw.strip() else None
    return section, key, check_value(dotted, tp, value)


def config_from_dict(saved: dict[str, Any], where: str = "saved config") -> Config:
    """A Config from a nested dict saved earlier (a checkpoint's), checked like a YAML file.
    Every error says the value came from `where` (the checkpoint), not from the user's config."""
    where = f"{where}: saved config"
    if not isinstance(saved, dict):
        raise ConfigError(f"{where}: expected a mapping of sections, got {type(saved).__name__}")
    saved = {section: dict(values) if isinstance(values, dict) else values for section, values in saved.items()}
    fmt = _saved_format(saved, where)
    for section, keys in ADDED_LATER.items():
        if isinstance(saved.get(section), dict):
            for key, value in keys.items():
                saved[section].setdefault(key, value)
    for (section, key, before), now in REINTERPRETED.items():
        values = saved.get(section)
        if fmt < 2 and isinstance(values, dict) and key in values and values[key] is before:
            values[key] = now
    for section, gone in REMOVED_LATER.items():
        if isinstance(saved.get(section), dict):
            for key in gone:
                saved[section].pop(key, None)
    layers = _check_mapping(saved, where, unknown=NEWER_CODE)
    try:
        return build_config(layers)
    except ConfigError as exc:  # a range check (validate) on the saved values
        raise ConfigError(f"{where}: {exc}") from None


def build_config(layers: dict[str, dict[str, Any]] | None = None) -> Config:
    layers = layers or {}
    sections = {name: SECTIONS[name](**layers.get(name, {})) for name in SECTIONS}
    config = Config(**sections)
    validate(config)
    return config


def load_config(path: str | Path | None = None, overrides: typing.Iterable[str] = ()) -> Config:
    """Defaults <- YAML file (with its base) <- `--set` overrides."""
    layers = load_yaml_layers(path) if path else {}
    for text in overrides:
        section, key, value = parse_override(text)
        layers.setdefault(section, {})[key] = value
    return build_config(layers)


def given_keys(path: str | Path | None = None, overrides: typing.Iterable[str] = ()) -> frozenset[str]:
    """The `section.key`s that a config file (with its base) and the overrides set, whatever
    their values: what a user chose. A resume takes these, also when one equals the default
    (`--epochs 100` is a choice even where 100 is the default)."""
    layers = load_yaml_layers(path) if path else {}
    keys = {f"{section}.{key}" for section, values in layers.items() for key in values}
    return frozenset(keys | {".".join(parse_override(text)[:2]) for text in overrides})


def replace(config: Config, **changes: dict[str, Any]) -> Config:
    """Return a copy with some keys changed, e.g. replace(cfg, train={"epochs": 2})."""
    layers = to_nested_dict(config)
    checked = _check_mapping(changes, "replace()")
    return build_config(_merge(layers, checked))


def validate(config: Config) -> None:
    """Every field's range (its `bounded` metadata), then the rules across fields."""
    problems = [f"{key} must be a finite number, got {value}" for key, value in to_flat_dict(config).items()
                if isinstance(value, float) and not math.isfinite(value)]  # nan passes every range check
    problems += _range_problems(config) + _cross_field_problems(config) + _group_problems(config) \
        + _name_problems(config)
    if problems:
        raise ConfigError("; ".join(problems))


def _range_problems(config: Config) -> list[str]:
    problems = []
    for section in SECTIONS:
        values = getattr(config, section)
        for f in dataclasses.fields(values):
            bounds, value = f.metadata.get("bounds"), getattr(values, f.name)
            if bounds is not None and value is not None and math.isfinite(value) and not bounds.holds(value):
                note = f" ({bounds.note})" if bounds.note else ""
                problems.append(f"{section}.{f.name} must be {bounds.text()}{note}, got {value}")
    return problems


def _cross_field_problems(config: Config) -> list[str]:
    """What one field's range cannot say: a value that must fit another field's."""
    d, problems = config.data, []
    if not 0 <= d.dominant_class < config.model.num_classes:
        problems.append(f"data.dominant_class must be a class id, 0..{config.model.num_classes - 1}")
    static_removal = config.model.static_removal or 0.0  # None (auto) is resolved by Config itself
    if static_removal > 0 and d.clip_len < 2:
        problems.append(f"model.static_removal={static_removal} needs data.clip_len >= 2: a one-frame "
                        "clip minus its mean over the clip is all zeros (set model.static_removal=0)")
    return problems


DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def _name_problems(config: Config) -> list[str]:
    """Names MLflow and torch would refuse later, with a worse message, after the work began."""
    problems = []
    if not DEVICE.fullmatch(config.train.device):
        problems.append(f"train.device must be auto, cpu, cuda, cuda:N or mps, got {config.train.device!r}")
    if not config.mlflow.experiment.strip():
        problems.append("mlflow.experiment must not be empty")
    if "/" in config.mlflow.registered_model or ":" in config.mlflow.registered_model:
        problems.append(f"mlflow.registered_model must not contain '/' or ':' (it is part of models:/NAME/VERSION), "
                        f"got {config.mlflow.registered_model!r}")
    for key, value, limit in (("mlflow.experiment", config.mlflow.experiment, MAX_EXPERIMENT_NAME),
                              ("mlflow.registered_model", config.mlflow.registered_model, MAX_MODEL_NAME)):
        if len(value) > limit:
            problems.append(f"{key} is {len(value)} characters long; MLflow takes at most {limit}")
    for key, value in (("data.root", config.data.root), ("paths.outputs", config.paths.outputs),
                       ("paths.cache", config.paths.cache)):
        problems.extend(_path_length_problems(key, value))
    return problems


MAX_EXPERIMENT_NAME, MAX_MODEL_NAME = 500, 256  # MLflow's limits (its validation and its registry's columns)
MAX_NAME_BYTES, MAX_PATH_BYTES = 255, 4095  # Linux, macOS and Windows file systems: a name, a whole path


def _path_length_problems(key: str, value: str) -> list[str]:
    """A path no file system takes (the OS would fail its first use with ENAMETOOLONG, after
    the work began); measured in UTF-8 bytes, as the file systems do."""
    if len(value.encode()) > MAX_PATH_BYTES:
        return [f"{key} is {len(value.encode())} bytes long; a path may have at most {MAX_PATH_BYTES}"]
    longest = max(value.replace("\\", "/").split("/"), key=lambda part: len(part.encode()))
    if len(longest.encode()) > MAX_NAME_BYTES:
        return [f"{key} has a folder or file name of {len(longest.encode())} bytes ({longest[:20]}...); a name may "
                f"have at most {MAX_NAME_BYTES}"]
    return []


def _group_problems(config: Config) -> list[str]:
    """Seed groups, subject folds and ensembles: what a config may combine."""
    d, t, problems = config.data, config.train, []
    if d.folds == 1 or d.folds < 0:
        problems.append(f"data.folds must be 0 (off) or >= 2, got {d.folds}")
    if d.fold is not None and not (d.folds >= 2 and 0 <= d.fold < d.folds):
        problems.append(f"data.fold must be in 0..data.folds-1 with data.folds >= 2 (data.folds {d.folds}), "
                        f"got {d.fold}")
    if d.folds and t.seeds:
        problems.append("data.folds and train.seeds cannot be combined: a group is either seeds or folds")
    if d.folds and d.train_on_val:
        problems.append("data.folds and data.train_on_val cannot be combined (folds need held-out subjects)")
    return problems


# ---------------------------------------------------------------------------------------------
# Export


def to_nested_dict(config: Config) -> dict[str, dict[str, Any]]:
    return dataclasses.asdict(config)


def to_flat_dict(config: Config) -> dict[str, Any]:
    """{'data.clip_len': 16, ...}: the form MLflow params take."""
    return {
        f"{section}.{key}": value
        for section, values in to_nested_dict(config).items()
        for key, value in values.items()
    }


def to_saved_dict(config: Config) -> dict[str, Any]:
    """The config as a run, checkpoint or model saves it: its sections and the `format` that tells
    a later exptrack what the values meant (config_from_dict reads it back)."""
    return {"format": CONFIG_FORMAT, **to_nested_dict(config)}


def to_yaml(config: Config) -> str:
    saved = {section: {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()} if isinstance(values, dict)
             else values for section, values in to_saved_dict(config).items()}  # YAML has lists, not tuples
    return yaml.safe_dump(saved, sort_keys=False)


def save_config(config: Config, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_yaml(config))
    return path
