"""Render the Slicer figures of docs/slicer_tutorial.md with Slicer's own slice pipeline (slicer-core),
outside desktop Slicer: the views are made as the application makes them (a layout logic with the
four-up layout first, one slice logic per view), the panels' logic runs the task in a real library
process, and nothing sets an orientation by hand.

    OMP_NUM_THREADS=1 .venv/bin/python docs/slicer_render_figures.py ../shared/data docs/

writes slicer_compare_layout.png (CT | real PET | synthetic PET of IBSI STS_001) and
slicer_denoise_result.png (the phantom sample's denoised PET fused over its CT, four-up views).
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "PETDiffusion"))

import slicer  # noqa: E402

from PETDiffusionSlicer import display, nodes, sampledata  # noqa: E402
from PETDiffusionSlicer.logic import TaskLogic  # noqa: E402


def views_as_the_application_makes_them(scene):
    layout_logic = slicer.vtkMRMLLayoutLogic()
    layout_logic.SetMRMLScene(scene)
    layout = layout_logic.GetLayoutNode()
    layout.SetViewArrangement(layout.SlicerLayoutFourUpView)
    display.headless_slice_logics(scene, display.COMPARE_VIEWS)
    return layout_logic


def panel(images, titles, path, suptitle):
    fig, axes = plt.subplots(1, len(images), figsize=(3.2 * len(images), 3.5), dpi=150)
    for ax, img, title in zip(axes, images, titles):
        ax.imshow(img)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.suptitle(suptitle, fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def compare_figure(data: Path, out: Path) -> None:
    scene = nodes.new_headless_scene()
    keep = views_as_the_application_makes_them(scene)  # noqa: F841 (the layout logic must live)
    folder = data / "petct_sts" / "nifti" / "STS_001"
    ct = sampledata._load(sampledata.SARCOMA.files[1], folder / "CT_image.nii.gz")
    pet = sampledata._load(sampledata.SARCOMA.files[0], folder / "PET_image.nii.gz")
    run = TaskLogic("ct-to-pet")
    run.reference_role = "ct"
    result = run.process({"ct": ct}, {"steps": 5, "seed": 0}, waitForCompletion=True, device="cpu", show=False)
    display.show_compare_layout(ct, pet, result.output_nodes["pet_synthetic"])
    orientations = [display.slice_node(scene, v).GetOrientationString() for v in display.COMPARE_VIEWS]
    images = display.render_slice_views(scene, size=256)
    labels = [display.slice_node(scene, v).GetLayoutLabel() for v in display.COMPARE_VIEWS]
    panel(images, [f"{v} ({o}): {lab}" for v, o, lab in zip(display.COMPARE_VIEWS, orientations, labels)],
          out / "slicer_compare_layout.png",
          "IBSI STS_001 (TCIA soft-tissue sarcoma, CC BY 3.0): CT | real FDG PET | synthetic PET\n"
          "(cpdm-phantom-2p5d, 5 steps), PET-Heat 0-10 SUVbw; Slicer slice pipeline (slicer-core)")
    print(f"compare layout: {dict(zip(display.COMPARE_VIEWS, orientations))}")


def denoise_figure(out: Path) -> None:
    scene = nodes.new_headless_scene()
    keep = views_as_the_application_makes_them(scene)  # noqa: F841
    with tempfile.TemporaryDirectory() as tmp:
        paths = sampledata.make_phantom_pair(Path(tmp))
        pet, ct = (sampledata._load(f, paths[f.file_name]) for f in sampledata.PHANTOM.files)
    logic = TaskLogic("denoise-segment")
    logic.reference_role = "pet"
    run = logic.process({"pet": pet, "ct": ct}, {"seed": 0}, waitForCompletion=True, device="cpu", show=False)
    display.fuse_pet_over_ct(run.output_nodes["pet_denoised"], ct)
    images = display.render_slice_views(scene, size=256, match_view=None)
    orientations = [display.slice_node(scene, v).GetOrientationString() for v in display.COMPARE_VIEWS]
    panel(images, [f"{v} ({o})" for v, o in zip(display.COMPARE_VIEWS, orientations)],
          out / "slicer_denoise_result.png",
          "PET Denoise and Segment on the phantom sample (10 % counts): denoised PET [SYNTHETIC],\nPET-Heat "
          "0-10 SUVbw at 50 % over the CT; Slicer slice pipeline (slicer-core)")
    print(f"denoise result: {dict(zip(display.COMPARE_VIEWS, orientations))}, "
          f"max SUV {float(np.max(slicer.util.arrayFromVolume(run.output_nodes['pet_denoised']))):.2f}")


if __name__ == "__main__":
    data, out = Path(sys.argv[1]), Path(sys.argv[2])
    compare_figure(data, out)
    denoise_figure(out)
