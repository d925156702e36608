"""A montage PNG of one simulated case: coronal and axial views of every image (docs/phantom_montage.png)."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from PETDiffusionLib.io.atomic import atomic_path
from PETDiffusionLib.io.images import read_image

log = logging.getLogger(__name__)

PANELS = [  # (image key, title, colour map, window)
    ("ct", "CT (HU)", "gray", (-400, 400)),
    ("suv_true", "true SUV", "gray_r", (0, 6)),
    ("pet_ac", "PET standard (AC)", "gray_r", (0, 6)),
    ("pet_low_10", "PET 10 % counts", "gray_r", (0, 6)),
    ("pet_nac", "PET NAC", "gray_r", (0, 6)),
    ("pet_delayed_ac", "PET delayed 150 min", "gray_r", (0, 6)),
    ("mr_t1", "MR T1", "gray", None),
    ("organs", "organ labels", "tab20", (0, 24)),
]


def save_montage(images: dict[str, np.ndarray], spacing_xyz: tuple[float, float, float], path: Path,
                 coronal_y: int | None = None, axial_z: int | None = None, title: str = "") -> Path:
    """Coronal (top row) and axial (bottom row) slices of each available image, physical aspect."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    panels = [p for p in PANELS if p[0] in images]
    ref = images["ct"]
    z, ny, nx = ref.shape
    cy = coronal_y if coronal_y is not None else ny // 2
    if axial_z is None:
        liver = images.get("organs")
        axial_z = int(np.argmax((liver == 6).sum((1, 2)))) if liver is not None else z // 2
    fig, axes = plt.subplots(2, len(panels), figsize=(2.3 * len(panels), 7.2),
                             gridspec_kw={"height_ratios": [z * spacing_xyz[2], ny * spacing_xyz[1]]})
    for i, (key, name, cmap, win) in enumerate(panels):
        vol = images[key]
        if win is None:
            win = (0, float(np.percentile(vol, 99.5)))
        kw = dict(cmap=cmap, vmin=win[0], vmax=win[1], interpolation="nearest")
        axes[0, i].imshow(vol[::-1, cy, :], aspect=spacing_xyz[2] / spacing_xyz[0], **kw)
        axes[1, i].imshow(vol[axial_z], aspect=spacing_xyz[1] / spacing_xyz[0], **kw)
        axes[0, i].set_title(name, fontsize=9)
        for a in axes[:, i]:
            a.set_xticks([])
            a.set_yticks([])
    fig.suptitle(title or "Simulated case (synthetic)", fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return Path(path)


def montage_from_case_dir(case_dir: Path, path: Path) -> Path:
    """Montage of a case folder written by ``petdiffusion phantom``."""

    case_dir = Path(case_dir)
    images = {}
    for key, *_ in PANELS:
        f = case_dir / f"{key}.nii.gz"
        if f.exists():
            images[key] = sitk.GetArrayFromImage(read_image(f, pixel_type=None))
    info = json.loads((case_dir / "case.json").read_text())
    d = info["demographics"]
    sp = tuple(info["grid"]["spacing_mm_xyz"])
    title = (f"Synthetic case {case_dir.name} (seed {info['seed']}): {d['sex']}, {d['age']:.0f} y, "
             f"{d['height_cm']:.0f} cm, {d['weight_kg']:.0f} kg, {len(info['lesions'])} lesions, "
             f"{info['tracer'].upper()}; {sp[0]:.1f}x{sp[1]:.1f}x{sp[2]:.1f} mm")
    return save_montage(images, sp, path, title=title)
