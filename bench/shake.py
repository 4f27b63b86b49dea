"""How much of what static removal keeps is the person, with and without stabilization? (issue 9)

Static removal (model.static_removal=1) feeds the model each pixel minus its mean over the clip.
On a still camera that leaves the person's motion; on a shaking one, every edge of the room
too. This measures it on a dataset with true person masks: for every 16-frame clip of every
subject, the squared residual inside the mask (person) and outside it (room), raw and after
stabilization, through the model's own step (`exptrack.models.c3d.remove_static`). Frames are
decoded with exptrack's own decoder at the training frame size. A border of `--border` pixels is left out (what the Fourier shift wraps).

Usage:
  python bench/shake.py [--data DIR | --preset hard] [--frame-size 64] [--subjects 3]
Prints, per setting, the person's share of the residual energy and the mean residual per pixel
of person and room.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import torch

from exptrack.data.errors import DataWarnings
from exptrack.data.layout import discover, mask_files
from exptrack.data.video import decode_video
from exptrack.models.c3d import remove_static


def subject_clips(video: Path, mask_dir: Path, size: int, clip_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, T, S, S, 3) float frames and (N, T, S, S) bool masks of consecutive clips."""
    frames, _ = decode_video(video, size)
    masks_by_frame = mask_files(mask_dir)
    n = min(len(frames), max(masks_by_frame, default=-1) + 1) // clip_len * clip_len
    masks = np.zeros((n, size, size), dtype=bool)
    for i in range(n):
        if i in masks_by_frame:
            m = cv2.imread(str(masks_by_frame[i]), cv2.IMREAD_GRAYSCALE)
            masks[i] = cv2.resize(m, (size, size), interpolation=cv2.INTER_NEAREST) > 127
    return (frames[:n].astype(np.float32).reshape(-1, clip_len, size, size, 3),
            masks.reshape(-1, clip_len, size, size))


def residual_energy(clips: np.ndarray, masks: np.ndarray, stabilized: bool, border: int) -> tuple[float, float, int, int]:
    x = torch.from_numpy(clips).permute(0, 4, 1, 2, 3)  # (N, 3, T, S, S)
    # exactly what the model's first convolution sees, with static_removal=1
    r = remove_static(x, 1.0, stabilized).pow(2).sum(dim=1).numpy()  # (N, T, S, S)
    inner = (slice(None), slice(None), slice(border, -border), slice(border, -border))
    r, m = r[inner], masks[inner]
    return float(r[m].sum()), float(r[~m].sum()), int(m.sum()), int((~m).sum())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="dataset root with person masks (default: the preset, generated)")
    parser.add_argument("--preset", default="hard", choices=["easy", "hard"])
    parser.add_argument("--frame-size", type=int, default=64)
    parser.add_argument("--clip-len", type=int, default=16)
    parser.add_argument("--subjects", type=int, default=3, help="how many subjects to measure")
    parser.add_argument("--border", type=int, default=3)
    args = parser.parse_args(argv)
    if args.data:
        root = Path(args.data)
    else:
        from exptrack.data.demo import preset_spec, write_demo_dataset

        root = write_demo_dataset(Path(tempfile.mkdtemp(prefix="exptrack-shake-")) / "data", preset_spec(args.preset))
    subjects = [s for s in discover(root, DataWarnings()).subjects if s.mask_dir is not None][:args.subjects]
    if not subjects:
        sys.exit(f"{root}: no subject has person masks")
    print(f"{root}: {len(subjects)} subjects, {args.frame_size} px, {args.clip_len}-frame clips")
    loaded = [subject_clips(s.video, s.mask_dir, args.frame_size, args.clip_len) for s in subjects]
    for stabilized in (False, True):
        person = room = person_px = room_px = 0
        for clips, masks in loaded:
            p, r, pp, rp = residual_energy(clips, masks, stabilized, args.border)
            person, room, person_px, room_px = person + p, room + r, person_px + pp, room_px + rp
        print(f"{'stabilized' if stabilized else 'raw':>10}: person's share of the residual {person / (person + room):.2f}; "
              f"per pixel: person {person / person_px:.0f}, room {room / room_px:.0f}")


if __name__ == "__main__":
    main()
