"""Reads the dataset layout (docs/data.md) and validates every input file.

    <root>/dataset/anon/<subject>.mp4
    <root>/dataset/mask/<subject>/<NNNNN>_mask.png     (1-based frame numbers)
    <root>/dataset/skeleton/yolo_pose_csv/<subject>.csv
    <root>/label/<subject>.csv
    <root>/split.csv

Anything unusable raises DataError naming the file (and line); anything safe to skip is
counted in a DataWarnings.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .errors import DataError, DataWarnings, require_file

BACKGROUND = -1
# What users read for background: no exercise is performed (a model's rest output, when it has one).
REST = "rest"
SPLITS = ("train", "val", "test")
_SPLIT_ALIASES = {"train": "train", "training": "train", "test": "test", "testing": "test",
                  "val": "val", "valid": "val", "validation": "val"}
_ID_COLUMNS = ("id", "subject", "subject_id")

KEYPOINT_NAMES = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
    "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)
NUM_KEYPOINTS = len(KEYPOINT_NAMES)
# Shoulders, elbows, wrists, hips: the joints skeleton attention uses.
ATTENTION_JOINTS = tuple(range(5, 13))

_MASK_NAME = re.compile(r"^(\d+)_mask\.png$", re.IGNORECASE)
_FRAME_COLUMNS = ("frame", "frame_number", "frame_idx", "frame_id")
_PERSON_COLUMNS = ("person", "track_id", "person_id")


@dataclass(frozen=True)
class SubjectFiles:
    subject: str
    split: str
    video: Path
    labels: Path | None  # None only for a video given to predict on its own
    mask_dir: Path | None
    keypoints: Path | None


@dataclass(frozen=True)
class DatasetLayout:
    root: Path
    subjects: tuple[SubjectFiles, ...]

    def by_split(self, split: str) -> list[SubjectFiles]:
        return [s for s in self.subjects if s.split == split]

    def subject(self, name: str) -> SubjectFiles:
        for s in self.subjects:
            if s.subject == name:
                return s
        raise DataError(f"{self.root}: no subject {name!r} (known: {', '.join(s.subject for s in self.subjects)})")


# ---------------------------------------------------------------------------------------------
# reading CSV text safely

# Longest piece of a file quoted in a message: a bad file must never flood the terminal.
_QUOTE_CHARS = 80
# Largest frame number accepted: beyond any real video, and far inside int64.
_MAX_FRAME = 10**9


def _quote(value: object) -> str:
    """repr() of a cell or row, cut to _QUOTE_CHARS characters."""
    text = repr(value)
    return text if len(text) <= _QUOTE_CHARS else text[:_QUOTE_CHARS] + "...'"


def _csv_rows(path: Path) -> list[list[str]]:
    """Every row of a CSV file, or DataError naming the file and line (never echoing it) when
    its bytes are not UTF-8 or the CSV syntax is broken."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")  # utf-8-sig: files saved by Excel
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise DataError(f"{path}:{line}: not UTF-8 text (byte {exc.start}: {exc.reason}); "
                        f"save it as UTF-8") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        return list(reader)
    except csv.Error as exc:
        raise DataError(f"{path}:{reader.line_num}: broken CSV ({exc})") from None


# ---------------------------------------------------------------------------------------------
# split.csv


def read_split(path: Path) -> dict[str, tuple[str, int]]:
    """split.csv -> {subject: (split, line number)}."""
    require_file(path, "split file (columns id,split)")
    rows = _csv_rows(path)
    if not rows:
        raise DataError(f"{path}: empty split file (expected a header id,split)")
    header = [h.strip().lower() for h in rows[0]]
    id_col = next((header.index(c) for c in _ID_COLUMNS if c in header), None)
    if id_col is None or "split" not in header:
        raise DataError(f"{path}:1: header must name an id column ({'/'.join(_ID_COLUMNS)}) and 'split', got {_quote(rows[0])}")
    split_col = header.index("split")
    out: dict[str, tuple[str, int]] = {}
    for line_no, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise DataError(f"{path}:{line_no}: expected {len(header)} columns, got {len(row)}: {_quote(row)}")
        subject, value = row[id_col].strip(), row[split_col].strip().lower()
        if not subject or subject in (".", "..") or any(c in subject for c in "/\\\0"):
            # it becomes part of file names (<subject>.mp4, label/<subject>.csv)
            raise DataError(f"{path}:{line_no}: subject id {_quote(subject)} is not a plain file name")
        if value not in _SPLIT_ALIASES:
            raise DataError(f"{path}:{line_no}: split {_quote(row[split_col])} is not train, val or test")
        if subject in out:
            raise DataError(f"{path}:{line_no}: subject {_quote(subject)} listed twice (first on line {out[subject][1]})")
        out[subject] = (_SPLIT_ALIASES[value], line_no)
    return out


# ---------------------------------------------------------------------------------------------
# class names

CLASS_NAMES_FILE = "classes.csv"


def read_class_names(root: str | Path | None, num_classes: int) -> list[str]:
    """Names of classes 0..num_classes-1 from the optional `<root>/classes.csv` (header id,name);
    a class the file does not name (or every class, without the file) is shown by its id."""
    names = [str(c) for c in range(num_classes)]
    path = Path(root) / CLASS_NAMES_FILE if root else None
    if path is None or not path.is_file():
        return names
    for row in _csv_rows(path):
        if len(row) < 2 or not row[0].strip().lstrip("+-").isdigit():
            continue  # header or blank line
        c = int(row[0])
        if 0 <= c < num_classes and row[1].strip():
            names[c] = row[1].strip()
    return names


def output_names(root: str | Path | None, num_classes: int, rest_class: bool) -> list[str]:
    """Names of a model's outputs: the exercise classes (read_class_names), then "rest"."""
    return read_class_names(root, num_classes) + ([REST] * rest_class)


def write_class_names(root: str | Path, names: list[str]) -> Path:
    path = Path(root) / CLASS_NAMES_FILE
    path.write_text("id,name\n" + "".join(f"{c},{n}\n" for c, n in enumerate(names)))
    return path


def class_label(c: int, names: list[str] | None) -> str:
    """How a user reads class `c`: 'name (id)' when it has a name, the id otherwise; "rest" for
    background (-1) and for a model's rest output."""
    if c == BACKGROUND or (names and 0 <= c < len(names) and c == len(names) - 1 and names[c] == REST):
        return REST
    if names and 0 <= c < len(names) and names[c] != str(c):
        return f"{names[c]} ({c})"
    return str(c)


# ---------------------------------------------------------------------------------------------
# discovery


def discover(root: str | Path, warnings: DataWarnings) -> DatasetLayout:
    """Match split.csv rows with the subject files under `root`."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: data root not found")
    anon = root / "dataset" / "anon"
    if not anon.is_dir():
        raise DataError(f"{anon}: video folder not found (layout: <root>/dataset/anon/<subject>.mp4)")
    split_path = root / "split.csv"
    split = read_split(split_path)
    videos = {p.stem: p for p in sorted(anon.glob("*.mp4"))}
    for subject in videos:
        if subject not in split:
            warnings.warn("subject_without_split", f"{videos[subject]}: no row for {subject!r} in {split_path}; skipped")
    subjects = []
    for subject, (which, line_no) in split.items():
        if subject not in videos:
            raise DataError(f"{split_path}:{line_no}: subject {_quote(subject)} has no video at {anon / (subject + '.mp4')}")
        labels = root / "label" / f"{subject}.csv"
        mask_dir = root / "dataset" / "mask" / subject
        keypoints = root / "dataset" / "skeleton" / "yolo_pose_csv" / f"{subject}.csv"
        require_file(labels, f"label file of subject {subject!r}")
        if keypoints.exists():
            require_file(keypoints, f"keypoint CSV of subject {subject!r}")
        subjects.append(SubjectFiles(
            subject=subject,
            split=which,
            video=videos[subject],
            labels=labels,
            mask_dir=mask_dir if mask_dir.is_dir() else None,
            keypoints=keypoints if keypoints.is_file() else None,
        ))
    if not subjects:
        raise DataError(f"{split_path}: lists no subject")
    return DatasetLayout(root=root, subjects=tuple(subjects))


def video_companions(video: Path, mask_dir: Path | None = None, keypoints: Path | None = None) -> SubjectFiles:
    """The files of one video outside any split (e.g. for `exptrack predict`): the given mask
    folder and keypoint CSV, else those the layout puts beside it when the video lies at
    `<root>/dataset/anon/<subject>.mp4`, and there its label file too; None for what is not there."""
    video = Path(video)
    subject = video.stem
    root = video.parent.parent.parent if video.parent.name == "anon" and video.parent.parent.name == "dataset" else None
    for given, what in ((mask_dir, "mask folder"), (keypoints, "keypoint CSV")):
        if given is not None and not (Path(given).is_dir() if what == "mask folder" else Path(given).is_file()):
            raise DataError(f"{given}: {what} not found")
    labels = None
    if root is not None:
        mask_dir = mask_dir or (root / "dataset" / "mask" / subject)
        keypoints = keypoints or (root / "dataset" / "skeleton" / "yolo_pose_csv" / f"{subject}.csv")
        labels = root / "label" / f"{subject}.csv"
    return SubjectFiles(subject=subject, split="predict", video=video,
                        labels=labels if labels is not None and labels.is_file() else None,
                        mask_dir=Path(mask_dir) if mask_dir is not None and Path(mask_dir).is_dir() else None,
                        keypoints=Path(keypoints) if keypoints is not None and Path(keypoints).is_file() else None)


# ---------------------------------------------------------------------------------------------
# labels


def _parse_int(text: str, path: Path, line_no: int, what: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise DataError(f"{path}:{line_no}: {what} {_quote(text.strip())} is not an integer") from None


def _frame_offset(frames: np.ndarray, base: str) -> int:
    """0 for 0-based numbering, 1 for 1-based; 'auto' is 0-based when frame 0 occurs."""
    if base == "auto":
        return 0 if (len(frames) == 0 or frames.min() == 0) else 1
    return int(base)


def _label_rows(path: Path) -> list[tuple[int, int, int]]:
    """(frame, class id, line number) of every row of a label file (a header line skipped)."""
    rows = []
    for line_no, row in enumerate(_csv_rows(path), start=1):
        if not row or not any(cell.strip() for cell in row):
            continue
        if len(row) != 3:
            raise DataError(f"{path}:{line_no}: expected 3 columns (frame_number, column1, column2), "
                            f"got {len(row)}: {_quote(row)}")
        if line_no == 1 and not row[0].strip().lstrip("+-").isdigit():
            continue  # a header line
        frame = _parse_int(row[0], path, line_no, "frame number")
        label = _parse_int(row[2], path, line_no, "class id")
        if frame < 0:
            raise DataError(f"{path}:{line_no}: negative frame number {frame}")
        if frame > _MAX_FRAME:
            raise DataError(f"{path}:{line_no}: frame number {_quote(row[0].strip())} is beyond {_MAX_FRAME}")
        if label < BACKGROUND:
            raise DataError(f"{path}:{line_no}: unknown class id {label} (valid: -1 background, 0 and up)")
        rows.append((frame, label, line_no))
    if not rows:
        raise DataError(f"{path}: no label rows")
    return rows


def _duplicate_label_row(path: Path, frame: int, first: tuple[int, int], again: tuple[int, int],
                         warnings: DataWarnings) -> None:
    """A frame labelled twice: the same class is harmless (counted); two classes are a
    contradiction that no rule resolves safely, so it stops with both lines."""
    (first_line, first_class), (line_no, label) = first, again
    if label != first_class:
        raise DataError(f"{path}:{line_no}: frame {frame} labelled {label} here but {first_class} on line {first_line}")
    warnings.warn("duplicate_label_rows", f"{path}:{line_no}: frame {frame} repeats line {first_line}; "
                  f"the repeat is ignored")


def check_class_ids(paths: list[Path], num_classes: int) -> None:
    """Before any video is decoded: every class id of these label files must be below
    model.num_classes; the error names the file, the largest id and the value needed."""
    largest, where = BACKGROUND, None
    for path in paths:
        for _, label, line_no in _label_rows(path):
            if label > largest:
                largest, where = label, f"{path}:{line_no}"
    if largest >= num_classes:
        raise DataError(f"{where}: unknown class id {largest}, the largest in the labels, but model.num_classes is "
                        f"{num_classes} (ids 0..{num_classes - 1}): set model.num_classes={largest + 1}")


def read_labels(path: Path, num_frames: int, num_classes: int, warnings: DataWarnings,
                frame_base: str = "auto") -> np.ndarray:
    """Frame-level labels -> (num_frames,) int16, background (-1) where the file has no row."""
    rows = []
    first_line: dict[int, tuple[int, int]] = {}  # frame -> (line, class) of its first row
    for frame, label, line_no in _label_rows(path):
        if label >= num_classes:
            raise DataError(
                f"{path}:{line_no}: unknown class id {label} (valid: -1 background, 0..{num_classes - 1}; "
                f"set model.num_classes={label + 1} or more if the dataset has more classes)"
            )
        if frame in first_line:
            _duplicate_label_row(path, frame, first_line[frame], (line_no, label), warnings)
            continue
        first_line[frame] = (line_no, label)
        rows.append((frame, label))
    table = np.asarray(rows, dtype=np.int64)
    frames = table[:, 0] - _frame_offset(table[:, 0], frame_base)
    if frames.min() < 0:
        raise DataError(f"{path}: frame numbers start below the declared base {frame_base}")
    labels = np.full(num_frames, BACKGROUND, dtype=np.int16)
    inside = frames < num_frames
    labels[frames[inside]] = table[inside, 1]
    labelled = int(frames.max()) + 1
    if labelled != num_frames:
        warnings.warn(
            "label_length_mismatch",
            f"{path}: labels cover {labelled} frames but the video has {num_frames}; using the overlap"
            + ("" if labelled > num_frames else ", the rest counts as background"),
        )
    return labels


# ---------------------------------------------------------------------------------------------
# keypoints


def _keypoint_columns(header: list[str], path: Path) -> np.ndarray:
    """Column index of (x, y, conf) for each of the 17 joints -> (17, 3) int array."""
    lookup = {h: i for i, h in enumerate(header)}
    cols = np.empty((NUM_KEYPOINTS, 3), dtype=np.int64)
    missing = []
    for j, name in enumerate(KEYPOINT_NAMES):
        for k, suffix in enumerate(("x", "y", "conf")):
            candidates = [f"kp{j}_{suffix}", f"{name}_{suffix}"]
            if suffix == "conf":
                candidates += [f"kp{j}_score", f"{name}_score", f"kp{j}_c", f"{name}_c"]
            found = next((lookup[c] for c in candidates if c in lookup), None)
            if found is None:
                missing.append(f"{candidates[0]} or {candidates[1]}")
            else:
                cols[j, k] = found
    if missing:
        raise DataError(f"{path}:1: missing keypoint columns: {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}")
    return cols


def _to_float_table(body: list[list[str]], header: list[str], path: Path, lines: list[int]) -> np.ndarray:
    """Parse CSV cells as floats (empty / nan -> NaN); a bad cell is named by its file line
    (`lines`, one per body row) and column."""
    cells = np.asarray(body, dtype=object)
    cells = np.where(cells == "", "nan", cells).astype(str)
    try:
        return cells.astype(np.float64)
    except ValueError:  # find the bad cell; Python's float() is the judge where numpy disagrees
        values = np.empty(cells.shape, dtype=np.float64)
        for r, row in enumerate(cells):
            for c, text in enumerate(row):
                try:
                    values[r, c] = float(text)
                except ValueError:
                    raise DataError(f"{path}:{lines[r]}: column {_quote(header[c])} value {_quote(str(text))} "
                                    f"is not a number") from None
        return values


def read_keypoints(path: Path, num_frames: int, warnings: DataWarnings, frame_base: str = "auto") -> np.ndarray:
    """Pose CSV -> (num_frames, 17, 3) float32 (x, y, conf) in original video pixels.

    Undetected joints (empty, NaN or conf 0) get conf 0. With several people per frame the
    most confident one (mean joint confidence) is kept.
    """
    # Blank lines are skipped; each row keeps its line in the file, which errors name.
    numbered = [(line, row) for line, row in enumerate(_csv_rows(path), start=1)
                if row and any(cell.strip() for cell in row)]
    if not numbered:
        raise DataError(f"{path}: empty keypoint file")
    rows = [row for _, row in numbered]
    lines = [line for line, _ in numbered[1:]]  # of the body rows, rows[1:]
    header = [h.strip().lower() for h in rows[0]]
    for line_no, row in zip(lines, rows[1:], strict=True):
        if len(row) != len(header):
            raise DataError(f"{path}:{line_no}: expected {len(header)} columns as in the header, got {len(row)}")
    cols = _keypoint_columns(header, path)
    if len(rows) == 1:
        warnings.warn("keypoint_frames_missing", f"{path}: header but no rows; attention is uniform", count=num_frames)
        return np.zeros((num_frames, NUM_KEYPOINTS, 3), dtype=np.float32)
    table = _to_float_table([[c.strip() for c in row] for row in rows[1:]], header, path, lines)
    frame_col = next((header.index(c) for c in _FRAME_COLUMNS if c in header), None)
    if frame_col is None:
        if any(c in header for c in _PERSON_COLUMNS):
            raise DataError(f"{path}:{numbered[0][0]}: a person column needs a frame column ({'/'.join(_FRAME_COLUMNS)})")
        frames = np.arange(len(table))
    else:
        raw = table[:, frame_col]
        with np.errstate(invalid="ignore"):
            wrong = ~np.isfinite(raw) | (raw != np.round(raw)) | (raw < 0) | (raw > _MAX_FRAME)
        if wrong.any():
            bad = int(np.flatnonzero(wrong)[0])
            raise DataError(f"{path}:{lines[bad]}: frame number {_quote(rows[bad + 1][frame_col])} is not an integer "
                            f"in 0..{_MAX_FRAME}")
        frames = raw.astype(np.int64)
        frames = frames - _frame_offset(frames, frame_base)
    joints = table[:, cols]  # (rows, 17, 3)
    infinite = np.isinf(joints).any(axis=2)  # (rows, 17): a joint "at infinity" would darken the whole frame
    if infinite.any():
        bad = int(np.flatnonzero(infinite.any(axis=1))[0])
        warnings.warn("keypoint_not_finite", f"{path}: {int(infinite.sum())} joints have an infinite coordinate or "
                      f"confidence (first at line {lines[bad]}); read as undetected", count=int(infinite.sum()))
    conf = np.nan_to_num(joints[..., 2], nan=0.0)
    undetected = ~np.isfinite(joints[..., 0]) | ~np.isfinite(joints[..., 1]) | ~np.isfinite(conf) | (conf <= 0)
    conf[undetected] = 0.0
    joints = np.nan_to_num(joints, nan=0.0, posinf=0.0, neginf=0.0)
    joints[..., 2] = conf

    out = np.zeros((num_frames, NUM_KEYPOINTS, 3), dtype=np.float32)
    best = np.full(num_frames, -1.0)
    score = conf.mean(axis=1)
    for row in np.argsort(score, kind="stable"):  # ascending: the most confident person wins
        f = frames[row]
        if 0 <= f < num_frames and score[row] >= best[f]:
            out[f] = joints[row]
            best[f] = score[row]
    missing = int((best < 0).sum())
    if missing:
        warnings.warn("keypoint_frames_missing",
                      f"{path}: {missing} of {num_frames} frames have no keypoint row (attention is uniform there)",
                      count=missing)
    return out


# ---------------------------------------------------------------------------------------------
# masks


def mask_files(mask_dir: Path | None) -> dict[int, Path]:
    """{0-based frame index: mask png}; file names are 1-based with any zero padding."""
    if mask_dir is None or not mask_dir.is_dir():
        return {}
    out = {}
    for p in mask_dir.iterdir():
        m = _MASK_NAME.match(p.name)
        if m and int(m.group(1)) >= 1:
            out[int(m.group(1)) - 1] = p
    return out


def read_mask(path: Path) -> np.ndarray | None:
    """A mask image as (H, W) uint8 with the person at 255; None when it cannot be read (or is
    not a regular file).

    Masks come in several encodings, all read the same: 8-bit 0/255, 16-bit 0/65535 (OpenCV's
    grayscale mode would scale them down), 16-bit files holding 8-bit values (0/255: scaled down
    they would be all "no person"), and 0/1 label images of either depth (read as "no person" by
    a >127 threshold). Colour masks count any channel. An alpha channel that is the same
    everywhere (an opaque RGBA or grey+alpha file) is not part of the mask; one that varies is the
    mask (a person cut out on a transparent background).
    """
    if not path.is_file():  # a FIFO named like a mask would block imread for ever
        return None
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None or img.dtype not in (np.uint8, np.uint16):
        return None
    if img.ndim == 3 and img.shape[2] == 4:  # BGRA: opaque everywhere, the colours are the mask, else the alpha
        alpha = img[..., 3]
        img = img[..., :3] if alpha.min() == alpha.max() else alpha
    if img.ndim == 3:
        img = img.max(axis=2)  # (H, W, C) -> (H, W): a person drawn in any colour
    if img.max() == 1:  # a 0/1 label image
        return (img * 255).astype(np.uint8)
    if img.dtype == np.uint16:  # 0/65535 scaled down; 8-bit values in a 16-bit file kept as they are
        return (img // 256 if img.max() > 255 else img).astype(np.uint8)
    return img
