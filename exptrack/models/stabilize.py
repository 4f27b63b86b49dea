"""Cancel camera shake inside a clip: pure tensor functions, used by C3D before static removal.

Static removal (models/c3d.py) subtracts each pixel's mean over the clip so that the room
cancels and the person's motion remains. A camera that shakes by a pixel breaks that: every
edge of a cluttered background then leaves a residual, and on the hard demo preset the
background held five times the person's share of what remained (bench/RESULTS.md "Recipe").
So each frame is first shifted onto the clip's middle frame.

The shift of a frame is found by (partly whitened) phase correlation with the middle frame:
the cross-power spectrum of two translated images is a phase ramp whose inverse transform
peaks at the translation. The background is most of the frame and moves rigidly with the
camera, so it makes the peak; a moving person only adds weaker, scattered ones. The peak is
refined to a fraction of a pixel (a parabola through it and its neighbours) and searched only
within `max_shift` of zero: shake is small, and a larger "shift" would be the person's motion.
The frame is then moved by the Fourier shift theorem (exact for fractional shifts; what leaves
one border re-enters at the other, a strip as wide as the shift).

Everything runs on the model's device in float32, batched: (B, C, T, H, W) in and out.
"""

from __future__ import annotations

import torch

# The cross-power spectrum is divided by its magnitude to this power. 1 is textbook phase
# correlation: every frequency counts the same, so a sharp-edged person can outvote a smoother
# background in the many high frequencies. 0 is plain correlation: broad peaks, less precise.
# Between the two, the background's energy still counts. On the hard preset both ends and 0.5
# left about the same residual (bench/RESULTS.md); 0.5 also found a high-contrast test scene's
# shift exactly (tests/test_model_loss.py).
WHITENING = 0.5


def _taper(n: int, device: torch.device, share: float = 0.2) -> torch.Tensor:
    """(n,) Tukey window: flat, with cosine tapers over `share` of the length at the ends.

    Tapering the borders keeps the frame's edges (which do not move with the scene) out of the
    correlation. It is flat elsewhere, not a Hann window: that would weigh the centre of the
    frame most, where the person usually is, and the background is what should decide."""
    ramp = max(1, int(share * n / 2))
    w = torch.ones(n, device=device)
    edge = 0.5 - 0.5 * torch.cos(torch.pi * (torch.arange(ramp, device=device) + 0.5) / ramp)
    w[:ramp], w[n - ramp:] = edge, edge.flip(0)
    return w


def _parabolic_offset(left: torch.Tensor, centre: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """Sub-pixel position of a peak from its value and its two neighbours, in (-0.5, 0.5)."""
    denom = left - 2.0 * centre + right
    offset = 0.5 * (left - right) / torch.where(denom.abs() > 1e-12, denom, torch.full_like(denom, -1e-12))
    return offset.clamp(-0.5, 0.5)


def estimate_shifts(x: torch.Tensor, max_shift: int) -> torch.Tensor:
    """(B, C, T, H, W) clips -> (B, T, 2) translation (dy, dx) of each frame relative to the
    clip's middle frame, in pixels: frame t(p) ~ middle(p - shift)."""
    b, _, t, h, w = x.shape
    gray = x.float().mean(dim=1)  # (B, T, H, W)
    gray = gray - gray.mean(dim=(-2, -1), keepdim=True)
    window = _taper(h, x.device)[:, None] * _taper(w, x.device)[None, :]  # (H, W)
    spectrum = torch.fft.fft2(gray * window)  # (B, T, H, W) complex
    cross = spectrum * spectrum[:, t // 2:t // 2 + 1].conj()  # (B, T, H, W) against the middle frame
    cross = cross / cross.abs().clamp_min(1e-12).pow(WHITENING)
    surface = torch.fft.ifft2(cross).real  # (B, T, H, W): peak at the shift, indices modulo (H, W)

    # Only shifts within max_shift of zero are candidates.
    dy = torch.fft.fftfreq(h, 1.0 / h, device=x.device).round().long()  # index -> signed shift
    dx = torch.fft.fftfreq(w, 1.0 / w, device=x.device).round().long()
    allowed = (dy.abs() <= max_shift)[:, None] & (dx.abs() <= max_shift)[None, :]  # (H, W)
    flat = surface.flatten(2)  # (B, T, H*W)
    peak = flat.masked_fill(~allowed.flatten(), float("-inf")).argmax(dim=2)  # (B, T)
    py, px = peak // w, peak % w

    def at(iy: torch.Tensor, ix: torch.Tensor) -> torch.Tensor:  # surface values at (iy, ix), wrapped
        return flat.gather(2, ((iy % h) * w + (ix % w))[..., None]).squeeze(2)  # (B, T)

    centre = at(py, px)
    sub_y = _parabolic_offset(at(py - 1, px), centre, at(py + 1, px)) if h > 2 else torch.zeros_like(centre)
    sub_x = _parabolic_offset(at(py, px - 1), centre, at(py, px + 1)) if w > 2 else torch.zeros_like(centre)
    return torch.stack([dy[py] + sub_y, dx[px] + sub_x], dim=-1)  # (B, T, 2)


def shift_frames(x: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Move each frame of (B, C, T, H, W) by -shift (B, T, 2), i.e. back onto the reference."""
    h, w = x.shape[-2:]
    fy = torch.fft.fftfreq(h, device=x.device)  # cycles per pixel
    fx = torch.fft.fftfreq(w, device=x.device)
    sy, sx = shifts[..., 0, None, None], shifts[..., 1, None, None]  # (B, T, 1, 1)
    # f(p + s) has spectrum F * exp(+2 pi i k s): moving the content back by s.
    phase = 2.0 * torch.pi * (sy * fy[:, None] + sx * fx[None, :])  # (B, T, H, W)
    ramp = torch.polar(torch.ones_like(phase), phase)[:, None]  # (B, 1, T, H, W)
    return torch.fft.ifft2(torch.fft.fft2(x.float()) * ramp).real.to(x.dtype)


def stabilize(x: torch.Tensor, max_shift_fraction: float = 0.05) -> torch.Tensor:
    """(B, C, T, H, W) clips with each frame shifted onto the clip's middle frame."""
    if x.shape[2] < 2:
        return x
    max_shift = max(1, round(max_shift_fraction * min(x.shape[-2:])))
    with torch.autocast(x.device.type, enabled=False), torch.no_grad():
        shifts = estimate_shifts(x, max_shift)
    return shift_frames(x, shifts)
