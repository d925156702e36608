"""The clinician's report: report.pdf (1-2 pages), report.json and the CSV tables.

The PDF holds a header (pseudonymous patient ID, study date, task, model id and version, the
research-use line and, for synthetic images, the banner), coronal and sagittal maximum intensity
projections of the PET with lesion contours, a plot of lesion SUVmax against volume, the lesion
table and the organ table. Figures: matplotlib (Agg); PDF: fpdf2. Nothing is written unless the
whole report succeeds (staging folder, then rename).
"""
from __future__ import annotations

import io
import logging
import os
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from PETDiffusionLib import __version__
from PETDiffusionLib.io.atomic import atomic_write_text, staging_dir
from PETDiffusionLib.quant.lesions import _check_grid, _lesion_labels, _name
from PETDiffusionLib.quant.tables import DEFINITIONS, QuantResult, quantify, to_json, write_result

log = logging.getLogger(__name__)

SYNTHETIC_BANNER = "SYNTHETIC IMAGE - RESEARCH USE ONLY, NOT FOR DIAGNOSIS"
RESEARCH_LINE = "Research use only. Not for diagnosis. Not a medical device."
#: most lesion rows printed in the PDF; the full table is always in lesions.csv.
MAX_PDF_LESION_ROWS = 40
#: most organ rows printed in the PDF (organs with voxels first); all are in organs.csv.
MAX_PDF_ORGAN_ROWS = 40


def fmt(value, digits: int = 2) -> str:
    """Number as printed in the PDF (fixed decimals); empty for a missing value."""
    if value is None:
        return "-"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return f"{float(value):.{digits}f}"


def latin1(text) -> str:
    """Text the PDF's core font can show (Latin-1); other characters become '?'."""
    return str(text).encode("latin-1", "replace").decode("latin-1")


# --------------------------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------------------------
def _mip_figure(suv_img: sitk.Image, lesion_img: sitk.Image | None, rows: list[dict] | None,
                synthetic: bool) -> bytes:
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    pet = sitk.DICOMOrient(suv_img, "LPS")
    arr = sitk.GetArrayFromImage(pet).astype(np.float32)  # z, y, x ; +x left, +y posterior, +z superior
    lab = None
    if lesion_img is not None:
        lab_img = sitk.GetImageFromArray(_lesion_labels(lesion_img, "lesion mask").astype(np.uint16))
        lab_img.CopyInformation(lesion_img)
        lab = sitk.GetArrayFromImage(sitk.DICOMOrient(lab_img, "LPS")) > 0
    sx, sy, sz = pet.GetSpacing()
    ox, oy, oz = pet.GetOrigin()
    nz, ny, nx = arr.shape
    views = [("Coronal MIP", arr.max(axis=1), None if lab is None else lab.any(axis=1),
              (ox - sx / 2, ox + (nx - 0.5) * sx, oz - sz / 2, oz + (nz - 0.5) * sz), "R  <-  x (mm)  ->  L"),
             ("Sagittal MIP", arr.max(axis=2), None if lab is None else lab.any(axis=2),
              (oy - sy / 2, oy + (ny - 0.5) * sy, oz - sz / 2, oz + (nz - 0.5) * sz), "A  <-  y (mm)  ->  P")]
    # window: SUV 0 to the 99.5th percentile of the projections (robust to one hot voxel)
    vmax = float(max(np.percentile(np.concatenate([v[1].ravel() for v in views]), 99.5), 1e-6))
    fig, axes = plt.subplots(1, 3, figsize=(7.3, 3.1), dpi=150, layout="constrained",
                             gridspec_kw={"width_ratios": [1, 1, 1]})
    for ax, (title, mip, cont, extent, xlabel) in zip(axes[:2], views):
        im = ax.imshow(mip, cmap="gray_r", vmin=0, vmax=vmax, origin="lower", extent=extent,
                       interpolation="nearest")
        if cont is not None and cont.any():
            xs = np.linspace(extent[0] + (extent[1] - extent[0]) / (2 * mip.shape[1]),
                             extent[1] - (extent[1] - extent[0]) / (2 * mip.shape[1]), mip.shape[1])
            zs = np.linspace(extent[2] + (extent[3] - extent[2]) / (2 * mip.shape[0]),
                             extent[3] - (extent[3] - extent[2]) / (2 * mip.shape[0]), mip.shape[0])
            ax.contour(xs, zs, cont.astype(float), levels=[0.5], colors="red", linewidths=0.8)
        ax.set_title(title + (" (synthetic)" if synthetic else ""), fontsize=8)
        ax.set_xlabel(xlabel, fontsize=6)
        ax.set_ylabel("z (mm), superior up", fontsize=6)
        ax.tick_params(labelsize=5)
    cb = fig.colorbar(im, ax=axes[1], fraction=0.05, pad=0.02)
    cb.set_label("SUV", fontsize=6)
    cb.ax.tick_params(labelsize=5)
    ax = axes[2]
    if rows:
        vol = [r["volume_ml"] for r in rows]
        ax.scatter(vol, [r["suv_max"] for r in rows], s=10, c="tab:red")
        if max(vol) / max(min(vol), 1e-9) > 50:
            ax.set_xscale("log")
        for r in rows[:20]:
            ax.annotate(str(r["lesion_id"]), (r["volume_ml"], r["suv_max"]), fontsize=5,
                        xytext=(2, 2), textcoords="offset points")
    else:
        ax.text(0.5, 0.5, "no lesion mask" if rows is None else "no lesions", ha="center",
                va="center", transform=ax.transAxes, fontsize=7)
    ax.set_xlabel("lesion volume (mL)", fontsize=6)
    ax.set_ylabel("SUVmax", fontsize=6)
    ax.set_title("Lesion SUVmax vs volume", fontsize=8)
    ax.tick_params(labelsize=5)
    if synthetic:
        fig.suptitle(SYNTHETIC_BANNER, color="red", fontsize=7, fontweight="bold")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------
# PDF
# --------------------------------------------------------------------------------------------
def _pdf_class(synthetic: bool):
    from fpdf import FPDF

    class ReportPDF(FPDF):
        def header(self):
            if synthetic and self.page_no() > 1:  # page 1 carries it under the title
                self.set_font("Helvetica", "B", 9)
                self.set_fill_color(200, 0, 0)
                self.set_text_color(255, 255, 255)
                self.cell(0, 6, SYNTHETIC_BANNER, align="C", fill=True, new_x="LMARGIN", new_y="NEXT")
                self.set_text_color(0, 0, 0)
                self.set_fill_color(255, 255, 255)
                self.ln(2)

        def footer(self):
            self.set_y(-12)
            self.set_font("Helvetica", "I", 7)
            self.set_text_color(120, 0, 0) if synthetic else self.set_text_color(90, 90, 90)
            text = (SYNTHETIC_BANNER + "  |  ") if synthetic else ""
            self.cell(0, 5, f"{text}{RESEARCH_LINE}  |  PETDiffusion {__version__}  |  page "
                            f"{self.page_no()}/{{nb}}", align="C")
            self.set_text_color(0, 0, 0)

    return ReportPDF


def _table(pdf, header: list[str], body: list[list[str]], widths: list[float]) -> None:
    from fpdf.fonts import FontFace
    pdf.set_font("Helvetica", "", 7)
    heading = FontFace(emphasis="BOLD", fill_color=(230, 230, 230))
    with pdf.table(col_widths=widths, text_align="RIGHT", line_height=4.2, width=sum(widths),
                   align="LEFT", headings_style=heading, first_row_as_headings=True) as table:
        row = table.row()
        for h in header:
            row.cell(h)
        for values in body:
            row = table.row()
            for v in values:
                row.cell(v)


def _build_pdf(result: QuantResult, figure_png: bytes, header: dict, synthetic: bool,
               extra: dict | None) -> bytes:
    from fpdf.enums import XPos, YPos
    pdf = _pdf_class(synthetic)(orientation="P", unit="mm", format="A4")
    pdf.set_auto_page_break(auto=True, margin=15)
    pdf.set_margins(12, 10, 12)
    pdf.add_page()
    nl = {"new_x": XPos.LMARGIN, "new_y": YPos.NEXT}
    pdf.set_font("Helvetica", "B", 14)
    pdf.cell(0, 8, "PETDiffusion - PET quantification report", **nl)
    if synthetic:
        pdf.set_fill_color(200, 0, 0)
        pdf.set_text_color(255, 255, 255)
        pdf.set_font("Helvetica", "B", 11)
        pdf.cell(0, 8, SYNTHETIC_BANNER, align="C", fill=True, **nl)
        pdf.set_text_color(0, 0, 0)
        pdf.set_fill_color(255, 255, 255)
    pdf.set_font("Helvetica", "B", 9)
    pdf.cell(0, 5, RESEARCH_LINE, **nl)
    pdf.ln(1)
    pdf.set_font("Helvetica", "", 8)
    for key, value in header.items():
        pdf.set_font("Helvetica", "B", 8)
        pdf.cell(38, 4.2, f"{key}:")
        pdf.set_font("Helvetica", "", 8)
        pdf.cell(0, 4.2, latin1(value), **nl)
    summary = result.summary()
    th = result.thresholds or {}
    seg = th.get("rule", "lesion mask given") if result.lesions is not None else "no lesion mask"
    if result.lesions is not None:
        line = (f"Lesions: {summary['lesion_count']}    TMTV: {fmt(summary['tmtv_ml'])} mL    "
                f"TTLG: {fmt(summary['ttlg'])}    Segmentation: {seg}")
        if "threshold_suv" in th:
            line += f" (SUV threshold {fmt(th['threshold_suv'])})"
    else:
        line = "Lesions: not measured (no lesion mask given)"
    pdf.ln(1)
    pdf.set_font("Helvetica", "B", 9)
    pdf.multi_cell(0, 5, line, **nl)
    liver = result.extra.get("liver_reference")
    if liver:
        lo, hi = liver["eanm_range"]
        pdf.set_font("Helvetica", "", 8)
        pdf.multi_cell(0, 4.2, f"Liver reference (3 cm sphere, {liver['voxels']} voxels): SUVmean "
                       f"{fmt(liver['suv_mean'])}, SD {fmt(liver['suv_sd'])} - "
                       f"{'within' if liver['within_eanm_range'] else 'OUTSIDE'} the EANM range "
                       f"{lo}-{hi} (Boellaard 2015)", **nl)
    pdf.image(io.BytesIO(figure_png), x=12, w=186)
    pdf.set_font("Helvetica", "I", 6.5)
    pdf.multi_cell(0, 3.2, "Inverted grey scale, SUV 0 to the 99.5th percentile of the projections; red: lesion contours "
                   "(projection of the lesion mask). " + "SUVpeak: " + DEFINITIONS["suv_peak"] + ". "
                   + DEFINITIONS["tlg"] + ". " + DEFINITIONS["volume_ml"] + ".", **nl)
    pdf.ln(1)
    if result.lesions is not None:
        pdf.set_font("Helvetica", "B", 10)
        pdf.cell(0, 6, f"Lesions ({len(result.lesions)})", **nl)
        body = [[str(r["lesion_id"]), fmt(r["centroid_x_mm"], 1), fmt(r["centroid_y_mm"], 1),
                 fmt(r["centroid_z_mm"], 1), str(r["voxels"]), fmt(r["volume_ml"]),
                 fmt(r["suv_max"]), fmt(r["suv_mean"]), fmt(r["suv_peak"]), fmt(r["tlg"])]
                for r in result.lesions[:MAX_PDF_LESION_ROWS]]
        if body:
            _table(pdf, ["ID", "x (mm)", "y (mm)", "z (mm)", "Voxels", "MTV (mL)", "SUVmax",
                         "SUVmean", "SUVpeak", "TLG"], body, [10, 18, 18, 18, 16, 20, 18, 18, 18, 20])
        else:
            pdf.set_font("Helvetica", "", 8)
            pdf.cell(0, 5, "The lesion mask is empty: no lesions.", **nl)
        if len(result.lesions) > MAX_PDF_LESION_ROWS:
            pdf.set_font("Helvetica", "I", 7)
            pdf.cell(0, 4, f"... {len(result.lesions) - MAX_PDF_LESION_ROWS} more lesions in lesions.csv",
                     **nl)
    if result.organs is not None:
        pdf.ln(2)
        pdf.set_font("Helvetica", "B", 10)
        pdf.cell(0, 6, f"Organs ({len(result.organs)})", **nl)
        shown = [r for r in result.organs if r["voxels"]][:MAX_PDF_ORGAN_ROWS]
        body = [[latin1(r["organ"]), str(r["label"]), str(r["voxels"]), fmt(r["volume_ml"]),
                 fmt(r["suv_mean"]), fmt(r["suv_sd"]), fmt(r["suv_median"]), fmt(r["suv_max"])]
                for r in shown]
        if body:
            _table(pdf, ["Organ", "Label", "Voxels", "Volume (mL)", "SUVmean", "SUV SD", "SUVmedian",
                         "SUVmax"], body, [44, 14, 20, 22, 20, 20, 22, 20])
        absent = [latin1(r["organ"]) for r in result.organs if not r["voxels"]]
        more = len([r for r in result.organs if r["voxels"]]) - len(shown)
        pdf.set_font("Helvetica", "I", 7)
        if more > 0:
            pdf.cell(0, 4, f"... {more} more organs in organs.csv", **nl)
        if absent:
            pdf.multi_cell(0, 4, "Named but absent from the organ map: " + ", ".join(absent[:30])
                           + (" ..." if len(absent) > 30 else ""), **nl)
    if extra:
        pdf.ln(2)
        pdf.set_font("Helvetica", "B", 10)
        pdf.cell(0, 6, "Task details", **nl)
        pdf.set_font("Helvetica", "", 8)
        for key, value in extra.items():
            text = fmt(value, 4) if isinstance(value, float) else str(value)
            pdf.multi_cell(0, 4.2, latin1(f"{key}: {text}"), **nl)
    return bytes(pdf.output())


def _write_segs(stage: Path, source: list, lesion_img, organ_img, organ_names,
                result: QuantResult) -> dict[str, str]:
    from PETDiffusionLib.report.dicom_seg import write_dicom_seg
    out = {}
    if lesion_img is not None and result.lesions:
        labels = sitk.GetImageFromArray(_lesion_labels(lesion_img, "lesion mask").astype(np.uint16))
        labels.CopyInformation(lesion_img)
        write_dicom_seg(labels, source, {r["lesion_id"]: f"Lesion {r['lesion_id']}"
                                         for r in result.lesions},
                        stage / "lesions_seg.dcm", series_description="PETDiffusion lesions")
        out["lesions_seg"] = "lesions_seg.dcm"
        from PETDiffusionLib.report.dicom_sr import write_lesion_sr
        write_lesion_sr(result.lesions, stage / "lesions_seg.dcm", source, stage / "lesions_sr.dcm")
        out["lesions_sr"] = "lesions_sr.dcm"
    if organ_img is not None and result.organs and any(r["voxels"] for r in result.organs):
        write_dicom_seg(organ_img, source, organ_names, stage / "organs_seg.dcm",
                        series_description="PETDiffusion organs")
        out["organs_seg"] = "organs_seg.dcm"
    return out


# --------------------------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------------------------
def make_report(out_dir: str | os.PathLike, suv_img: sitk.Image, lesion_img: sitk.Image | None = None,
                organ_img: sitk.Image | None = None, organ_names: dict[int, str] | None = None, *,
                task: str, model_id: str | None, model_version: str | None, synthetic: bool,
                patient_id: str = "anonymous", study_date: str | None = None,
                extra: dict | None = None, thresholds: dict | None = None,
                dicom_source: list | None = None) -> dict[str, Path]:
    """Write report.pdf, report.json, lesions.csv / organs.csv (as measured) and summary.json.

    ``synthetic`` must be True when the PET (or any image in the report) is a model output: the
    PDF then carries the synthetic banner on every page. ``extra`` (JSON-able) holds task facts,
    printed under "Task details" and stored in report.json. ``dicom_source`` (the PET's DICOM
    series as pydicom datasets, on the PET grid) adds lesions_seg.dcm (one segment per lesion, ids
    as in the table), lesions_sr.dcm (TID 1500 measurements per lesion) and organs_seg.dcm. Returns {name: final path}.
    """
    from PETDiffusionLib.io.images import is_synthetic
    synthetic = bool(synthetic or is_synthetic(suv_img))
    if lesion_img is not None:
        _check_grid(suv_img, lesion_img, "the PET", _name(lesion_img, "lesion mask"))
    result = quantify(suv_img, lesion_img, organ_img, organ_names, thresholds)
    created = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    header = {"Patient ID (pseudonym)": patient_id or "anonymous",
              "Study date": study_date or "not given",
              "Task": task,
              "Model": (f"{model_id} (version {model_version or 'unknown'})" if model_id
                        else "none (quantification only)"),
              "Images": "SYNTHETIC (model output)" if synthetic else "acquired PET",
              "Created": f"{created}, PETDiffusion {__version__}"}
    figure = _mip_figure(suv_img, lesion_img, result.lesions, synthetic)
    pdf_bytes = _build_pdf(result, figure, header, synthetic, extra)
    out_dir = Path(out_dir)
    with staging_dir(out_dir) as stage:
        names = {k: p.name for k, p in write_result(stage, result).items()}
        (stage / "report.pdf").write_bytes(pdf_bytes)
        names["report_pdf"] = "report.pdf"
        report = {"patient_id": patient_id or "anonymous", "study_date": study_date, "task": task,
                  "model_id": model_id, "model_version": model_version, "synthetic": synthetic,
                  "banner": SYNTHETIC_BANNER if synthetic else None,
                  "research_use": RESEARCH_LINE, "summary": result.summary(),
                  "lesions": result.lesions, "organs": result.organs, "extra": extra or {},
                  "files": sorted(names.values()) + ["report.json"]}
        if dicom_source:
            names.update(_write_segs(stage, dicom_source, lesion_img, organ_img, organ_names,
                                     result))
            report["files"] = sorted(names.values()) + ["report.json"]
        atomic_write_text(stage / "report.json", to_json(report))
        names["report_json"] = "report.json"
    log.info("report written to %s", out_dir)
    return {k: out_dir / v for k, v in names.items()}
