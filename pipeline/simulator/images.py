"""Synthetic creatives: a small RGB image rendered from an item's visual attributes.

The picture is a smooth function of the attributes (background hue, foreground hue,
disc radius and centre, stripe density), so items with close attributes get close
images: what visual semantic IDs (Tencent Sec. 3.2) must recover from pixels.
"""
from __future__ import annotations

import numpy as np

_BATCH = 2048  # items rendered at once (bounds memory)


def render_images(visual: np.ndarray, size: int, noise: float, rng: np.random.Generator) -> np.ndarray:
    """uint8 [N, size, size, 3] images for visual attributes [N, 6] in [0, 1]."""
    out = np.empty((len(visual), size, size, 3), np.uint8)
    grid = (np.arange(size, dtype=np.float32) + 0.5) / size
    y, x = np.meshgrid(grid, grid, indexing="ij")
    for lo in range(0, len(visual), _BATCH):
        v = visual[lo:lo + _BATCH].astype(np.float32)[:, :, None, None]  # [n, 6, 1, 1]
        bg = _hsv_to_rgb(v[:, 0], 0.45, 0.92)  # [n, 1, 1, 3]
        fg = _hsv_to_rgb(v[:, 1], 0.85, 0.85)
        radius = 0.12 + 0.3 * v[:, 2]
        cx, cy = 0.25 + 0.5 * v[:, 3], 0.25 + 0.5 * v[:, 4]
        dist = np.sqrt((x - cx) ** 2 + (y - cy) ** 2)
        disc = 1.0 / (1.0 + np.exp(-(radius - dist) * (2.0 * size)))  # soft edge, one pixel wide
        freq = 1.0 + 5.0 * v[:, 5]
        shade = 1.0 - 0.35 * (0.5 + 0.5 * np.sin(2.0 * np.pi * freq * (x + y)))
        img = bg * (1.0 - disc[..., None]) + fg * (disc * shade)[..., None]
        img += noise * rng.standard_normal(img.shape, dtype=np.float32)
        out[lo:lo + _BATCH] = np.clip(img * np.float32(255.0) + np.float32(0.5), 0, 255).astype(np.uint8)
    return out


def _hsv_to_rgb(h: np.ndarray, s: float, v: float) -> np.ndarray:
    """HSV -> RGB for hue arrays [...] (constant s, v); returns [..., 3]."""
    k = (np.array([5.0, 3.0, 1.0], np.float32) + h[..., None] * np.float32(6.0)) % np.float32(6.0)
    return v - v * s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)
