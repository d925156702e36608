"""The clinician's report: report.pdf (1-2 pages), report.json and the CSV tables.

The PDF holds a header (pseudonymous patient ID, study date, task, model id and version, the
research-use line and, for synthetic images, the banner), coronal and sagittal maximum intensity
projections of the PET with lesion contours, a plot of lesion SUVmax against volume, the lesion
table and the organ table. Figures: matplotlib (Agg); PDF: fpdf2. Nothing is written unless the
whole report succeeds (staging folder, then rename).
"""
from __future__ import annotations

import io
import json
import logging
import os
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from PETDiffusionLib import __version__
from PETDiffusionLib.io.atomic import atomic_write_text, staging_dir
from PETDiffusionLib.io.images import is_synthetic
from PETDiffusionLib.quant.lesions import _check_grid, _lesion_labels, _name
from PETDiffusionLib.quant.tables import (COLUMN_UNITS, DEFINITIONS, QuantResult, quantify, to_json,
                                          write_result)
from PETDiffusionLib.report.dicom_seg import write_dicom_seg
from PETDiffusionLib.report.dicom_sr import write_lesion_sr
from PETDiffusionLib.report.study import header_lines, study_header

log = logging.getLogger(__name__)

SYNTHETIC_BANNER = "SYNTHETIC IMAGE - RESEARCH USE ONLY, NOT FOR DIAGNOSIS"
RESEARCH_LINE = "Research use only. Not for diagnosis. Not a medical device."
#: most lesion rows printed in the PDF; the full table is always in lesions.csv.
MAX_PDF_LESION_ROWS = 40
#: most organ rows printed in the PDF (organs with voxels first); all are in organs.csv.
MAX_PDF_ORGAN_ROWS = 40
#: most lesion IDs written on the MIPs (the highest SUVmax first), to keep them legible.
MAX_MIP_LABELS = 20


def fmt(value, digits: int = 2) -> str:
    """Number as printed in the PDF (fixed decimals); empty for a missing value."""
    if value is None:
        return "-"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return f"{float(value):.{digits}f}"


def fmt_value(value) -> str:
    """A task detail as printed: integers and integral floats without decimals (kVp 120, not
    120.0000), large values with one decimal, others with 4 significant digits."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return str(value)
    v = float(value)
    if not np.isfinite(v):
        return "-"
    if v == int(v) and abs(v) < 1e12:
        return str(int(v))
    if abs(v) >= 100:
        return f"{v:.1f}"
    return f"{v:.4g}"


def unit(column: str) -> str:
    """Column heading suffix with its unit, e.g. " (SUVbw)"."""
    u = COLUMN_UNITS.get(column)
    return f" ({u})" if u else ""


def by_suvmax(rows: list[dict]) -> list[dict]:
    """Lesion rows, highest SUVmax first (ties: lower lesion ID first)."""
    return sorted(rows, key=lambda r: (-r["suv_max"], r["lesion_id"]))


def latin1(text) -> str:
    """Text the PDF's core font can show (Latin-1); other characters become '?'."""
    return str(text).encode("latin-1", "replace").decode("latin-1")


# --------------------------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------------------------
def _mip_figure(suv_img: sitk.Image, lesion_img: sitk.Image | None, rows: list[dict] | None,
                synthetic: bool) -> bytes:
    """Coronal and sagittal MIPs (lesion contours and IDs when there are lesions) and, when there
    are lesions, a plot of SUVmax against volume; no lesion panel without lesions."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    pet = sitk.DICOMOrient(suv_img, "LPS")
    arr = sitk.GetArrayFromImage(pet).astype(np.float32)  # z, y, x ; +x left, +y posterior, +z superior
    lab = None
    if lesion_img is not None and rows:
        lab_img = sitk.GetImageFromArray(_lesion_labels(lesion_img, "lesion mask").astype(np.uint16))
        lab_img.CopyInformation(lesion_img)
        lab = sitk.GetArrayFromImage(sitk.DICOMOrient(lab_img, "LPS")) > 0
    sx, sy, sz = pet.GetSpacing()
    ox, oy, oz = pet.GetOrigin()
    nz, ny, nx = arr.shape
    # (title, projection, contour mask, extent, x label, which LPS centroid coordinate is the x axis)
    views = [("Coronal MIP", arr.max(axis=1), None if lab is None else lab.any(axis=1),
              (ox - sx / 2, ox + (nx - 0.5) * sx, oz - sz / 2, oz + (nz - 0.5) * sz), "R  <-  x (mm)  ->  L",
              "centroid_x_mm"),
             ("Sagittal MIP", arr.max(axis=2), None if lab is None else lab.any(axis=2),
              (oy - sy / 2, oy + (ny - 0.5) * sy, oz - sz / 2, oz + (nz - 0.5) * sz), "A  <-  y (mm)  ->  P",
              "centroid_y_mm")]
    # window: SUV 0 to the 99.5th percentile of the projections (robust to one hot voxel)
    vmax = float(max(np.percentile(np.concatenate([v[1].ravel() for v in views]), 99.5), 1e-6))
    panels = 3 if rows else 2
    fig, axes = plt.subplots(1, panels, figsize=(7.3 if rows else 5.2, 3.1), dpi=150, layout="constrained")
    labelled = by_suvmax(rows)[:MAX_MIP_LABELS] if rows else []
    for ax, (title, mip, cont, extent, xlabel, xkey) in zip(axes[:2], views):
        im = ax.imshow(mip, cmap="gray_r", vmin=0, vmax=vmax, origin="lower", extent=extent,
                       interpolation="nearest")
        if cont is not None and cont.any():
            xs = np.linspace(extent[0] + (extent[1] - extent[0]) / (2 * mip.shape[1]),
                             extent[1] - (extent[1] - extent[0]) / (2 * mip.shape[1]), mip.shape[1])
            zs = np.linspace(extent[2] + (extent[3] - extent[2]) / (2 * mip.shape[0]),
                             extent[3] - (extent[3] - extent[2]) / (2 * mip.shape[0]), mip.shape[0])
            ax.contour(xs, zs, cont.astype(float), levels=[0.5], colors="red", linewidths=0.8)
        for r in labelled:   # the lesion's ID beside its centroid, as in the table
            ax.annotate(str(r["lesion_id"]), (r[xkey], r["centroid_z_mm"]), xytext=(4, 3),
                        textcoords="offset points", fontsize=5.5, color="blue", fontweight="bold")
        ax.set_title(title + (" (synthetic)" if synthetic else ""), fontsize=8)
        ax.set_xlabel(xlabel, fontsize=6)
        ax.set_ylabel("z (mm), superior up", fontsize=6)
        ax.tick_params(labelsize=5)
    cb = fig.colorbar(im, ax=axes[1], fraction=0.05, pad=0.02)
    cb.set_label("SUVbw", fontsize=6)
    cb.ax.tick_params(labelsize=5)
    if rows:
        ax = axes[2]
        vol = [r["volume_ml"] for r in rows]
        ax.scatter(vol, [r["suv_max"] for r in rows], s=10, c="tab:red")
        if max(vol) / max(min(vol), 1e-9) > 50:
            ax.set_xscale("log")
        for r in labelled:
            ax.annotate(str(r["lesion_id"]), (r["volume_ml"], r["suv_max"]), fontsize=5,
                        xytext=(2, 2), textcoords="offset points")
        ax.set_xlabel("lesion volume, MTV (mL)", fontsize=6)
        ax.set_ylabel("SUVmax (SUVbw)", fontsize=6)
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


def _table(pdf, header: list[str], body: list[list[str]], widths: list[float],
           left: tuple[int, ...] = ()) -> None:
    """A table with right-aligned numbers; the columns in ``left`` (names) are left-aligned."""
    from fpdf.fonts import FontFace
    pdf.set_font("Helvetica", "", 7)
    heading = FontFace(emphasis="BOLD", fill_color=(230, 230, 230))
    align = tuple("LEFT" if i in left else "RIGHT" for i in range(len(widths)))
    with pdf.table(col_widths=widths, text_align=align, line_height=3.6, width=sum(widths),
                   align="LEFT", headings_style=heading, first_row_as_headings=True) as table:
        row = table.row()
        for h in header:
            row.cell(h)
        for values in body:
            row = table.row()
            for v in values:
                row.cell(v)


def _reference_lines(result: QuantResult) -> list[str]:
    """PERCIST reference regions and the EANM liver check, one line each."""
    lines = []
    liver = result.extra.get("liver_reference")
    refs = result.references or {}
    if "liver" in refs:
        r = refs["liver"]
        line = (f"Liver reference (PERCIST, 3 cm sphere, {r['reference_voxels']} voxels): SUVmean "
                f"{fmt(r['reference_mean'])} SUVbw, SD {fmt(r['reference_sd'])}; PERCIST threshold "
                f"1.5 x mean + 2 x SD = {fmt(r['threshold_suv'])} SUVbw")
        if liver:
            lo, hi = liver["eanm_range"]
            line += (f"; {'within' if liver['within_eanm_range'] else 'OUTSIDE'} the EANM liver range "
                     f"{lo}-{hi} (Boellaard 2015)")
        lines.append(line)
    elif liver:
        lo, hi = liver["eanm_range"]
        lines.append(f"Liver reference (3 cm sphere, {liver['voxels']} voxels): SUVmean "
                     f"{fmt(liver['suv_mean'])} SUVbw, SD {fmt(liver['suv_sd'])} - "
                     f"{'within' if liver['within_eanm_range'] else 'OUTSIDE'} the EANM range "
                     f"{lo}-{hi} (Boellaard 2015)")
    if "blood_pool" in refs:
        r = refs["blood_pool"]
        lines.append(f"Mediastinal blood pool (aorta, 1 cm x 2 cm cylinder, {r['reference_voxels']} voxels): "
                     f"SUVmean {fmt(r['reference_mean'])} SUVbw, SD {fmt(r['reference_sd'])}; PERCIST "
                     f"blood-pool threshold 2.0 x mean + 2 x SD = {fmt(r['threshold_suv'])} SUVbw")
    for note in refs.get("notes", []):
        lines.append(f"Reference region not measured: {note}")
    return lines


def _lesion_table_rows(rows: list[dict], with_input: bool,
                       with_site: bool = True) -> tuple[list[str], list[list[str]], list[float]]:
    """Heading, body and widths (mm) of the PDF lesion table, highest SUVmax first; the Site column
    only when an organ map told where the lesions lie."""
    head = ["ID", "Site", "Centroid R, A, S (mm)", "Voxels", "MTV" + unit("volume_ml"),
            "SUVmax" + unit("suv_max"), "SUVpeak" + unit("suv_peak")]
    widths = [8, 26, 28, 11, 14, 16, 16]
    if with_input:
        head += ["Input SUVmax" + unit("input_suv_max"), "Input SUVpeak" + unit("input_suv_peak")]
        widths += [16, 16]
    head += ["SUVmean" + unit("suv_mean"), "TLG" + unit("tlg")]
    widths += [16, 17]
    body = []
    for r in by_suvmax(rows)[:MAX_PDF_LESION_ROWS]:
        ras = ", ".join(fmt(r.get(k), 1) for k in ("centroid_r_mm", "centroid_a_mm", "centroid_s_mm"))
        line = [str(r["lesion_id"]), latin1(r.get("organ") or "-"), ras, str(r["voxels"]),
                fmt(r["volume_ml"]), fmt(r["suv_max"]), fmt(r["suv_peak"])]
        if with_input:
            line += [fmt(r.get("input_suv_max")), fmt(r.get("input_suv_peak"))]
        line += [fmt(r["suv_mean"]), fmt(r["tlg"])]
        body.append(line)
    if not with_site:
        head, widths = head[:1] + head[2:], widths[:1] + widths[2:]
        body = [b[:1] + b[2:] for b in body]
    return head, body, widths


def _build_pdf(result: QuantResult, figure_png: bytes, header: dict, synthetic: bool,
               extra: dict | None, input_label: str | None = None) -> bytes:
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
        pdf.multi_cell(0, 4.2, latin1(value), **nl)
    summary = result.summary()
    th = result.thresholds or {}
    seg = th.get("rule", "lesion mask given") if result.lesions is not None else "no lesion mask"
    if result.lesions is not None:
        line = (f"Lesions: {summary['lesion_count']}    TMTV: {fmt(summary['tmtv_ml'])} mL    "
                f"TTLG: {fmt(summary['ttlg'])} SUVbw*mL    Segmentation: {seg}")
        if "threshold_suv" in th:
            line += f" (SUV threshold {fmt(th['threshold_suv'])} SUVbw)"
    else:
        line = "Lesions: not measured (no lesion mask given)"
    pdf.ln(1)
    pdf.set_font("Helvetica", "B", 9)
    pdf.multi_cell(0, 5, line, **nl)
    pdf.set_font("Helvetica", "", 8)
    for ref_line in _reference_lines(result):
        pdf.multi_cell(0, 4.2, latin1(ref_line), **nl)
    lesions_shown = bool(result.lesions)
    pdf.image(io.BytesIO(figure_png), x=12, w=186 if lesions_shown else 133)
    pdf.set_font("Helvetica", "I", 6.5)
    caption = "Inverted grey scale, SUVbw 0 to the 99.5th percentile of the projections"
    if lesions_shown:
        caption += ("; red: lesion contours (projection of the lesion mask), blue: lesion IDs as in the "
                    "table. SUVpeak: " + DEFINITIONS["suv_peak"] + ". " + DEFINITIONS["tlg"] + ". "
                    + DEFINITIONS["volume_ml"] + ".")
    else:
        caption += "."
    pdf.multi_cell(0, 3.2, caption, **nl)
    pdf.ln(1)
    if result.lesions is not None:
        pdf.set_font("Helvetica", "B", 10)
        pdf.cell(0, 6, f"Lesions ({len(result.lesions)}), highest SUVmax first", **nl)
        with_input = any(r.get("input_suv_max") is not None for r in result.lesions)
        with_site = any("organ" in r for r in result.lesions)
        head, body, widths = _lesion_table_rows(result.lesions, with_input, with_site)
        if body:
            _table(pdf, head, body, widths, left=(1,) if with_site else ())
            pdf.set_font("Helvetica", "I", 6.5)
            note = ("Site: the organ holding most of the lesion's voxels (organ map). " if with_site else "")
            note += "Centroids in RAS patient coordinates, as Slicer shows them."
            if with_input:
                note += (f" Input SUVmax/SUVpeak: the same lesion measured on the {input_label or 'input PET'}"
                         " (acquired), beside the values on the model output.")
            pdf.multi_cell(0, 3.2, note, **nl)
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
            _table(pdf, ["Organ", "Label", "Voxels", "Volume (mL)", "SUVmean (SUVbw)", "SUV SD (SUVbw)",
                         "SUVmedian (SUVbw)", "SUVmax (SUVbw)"], body, [44, 14, 20, 22, 20, 20, 22, 20],
                   left=(0,))
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
            pdf.multi_cell(0, 4.2, latin1(f"{key}: {fmt_value(value)}"), **nl)
    return bytes(pdf.output())


def _write_segs(stage: Path, source: list, lesion_img, organ_img, organ_names,
                result: QuantResult) -> dict[str, str]:
    out = {}
    if lesion_img is not None and result.lesions:
        labels = sitk.GetImageFromArray(_lesion_labels(lesion_img, "lesion mask").astype(np.uint16))
        labels.CopyInformation(lesion_img)
        write_dicom_seg(labels, source, {r["lesion_id"]: f"Lesion {r['lesion_id']}"
                                         for r in result.lesions},
                        stage / "lesions_seg.dcm", series_description="PETDiffusion lesions")
        out["lesions_seg"] = "lesions_seg.dcm"
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
                dicom_source: list | None = None, input_pet: sitk.Image | None = None,
                input_label: str = "low-count input PET", study: dict | None = None) -> dict[str, Path]:
    """Write report.pdf, report.json, lesions.csv / organs.csv (as measured) and summary.json.

    ``synthetic`` must be True when the PET (or any image in the report) is a model output: the
    PDF then carries the synthetic banner on every page. ``extra`` (JSON-able) holds task facts,
    printed under "Task details" and stored in report.json. ``dicom_source`` (the PET's DICOM
    series as pydicom datasets, on the PET grid) adds lesions_seg.dcm (one segment per lesion, ids
    as in the table), lesions_sr.dcm (TID 1500 measurements per lesion) and organs_seg.dcm, and its
    headers fill the study header (tracer, injected activity, times, uptake, scanner, ...;
    :mod:`PETDiffusionLib.report.study`). ``study`` (same keys) overrides what the headers say.
    ``input_pet`` (the measured PET a model output was made from, on its grid) adds its SUVmax and
    SUVpeak in each lesion beside the output's. Returns {name: final path}.
    """
    synthetic = bool(synthetic or is_synthetic(suv_img))
    if lesion_img is not None:
        _check_grid(suv_img, lesion_img, "the PET", _name(lesion_img, "lesion mask"))
    result = quantify(suv_img, lesion_img, organ_img, organ_names, thresholds, input_pet=input_pet)
    facts = study_header(suv_img, dicom_source, study, input_img=input_pet)
    if patient_id and patient_id != "anonymous":
        facts["patient_id"] = patient_id
    facts.setdefault("patient_id", "anonymous")
    if study_date:
        facts["study_date"] = study_date
    facts.setdefault("study_date", "not given")
    created = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    header = header_lines(facts)
    header.update({"Task": task,
                   "Model": (f"{model_id} (version {model_version or 'unknown'})" if model_id
                             else "none (quantification only)"),
                   "Images": "SYNTHETIC (model output)" if synthetic else "acquired PET",
                   "Created": f"{created}, PETDiffusion {__version__}"})
    figure = _mip_figure(suv_img, lesion_img, result.lesions, synthetic)
    pdf_bytes = _build_pdf(result, figure, header, synthetic, extra, input_label)
    out_dir = Path(out_dir)
    with staging_dir(out_dir) as stage:
        names = {k: p.name for k, p in write_result(stage, result).items()}
        (stage / "report.pdf").write_bytes(pdf_bytes)
        names["report_pdf"] = "report.pdf"
        report = {"patient_id": facts["patient_id"], "study_date": study_date or facts.get("study_date"),
                  "task": task, "model_id": model_id, "model_version": model_version,
                  "synthetic": synthetic, "banner": SYNTHETIC_BANNER if synthetic else None,
                  "research_use": RESEARCH_LINE, "study": facts, "summary": result.summary(),
                  "units": {k: v for k, v in COLUMN_UNITS.items()},
                  "references": result.references,
                  "lesions": result.lesions,
                  "lesion_ids_by_suvmax": [r["lesion_id"] for r in by_suvmax(result.lesions or [])],
                  "organs": result.organs, "extra": extra or {},
                  "files": sorted(names.values()) + ["report.json"]}
        if dicom_source:
            names.update(_write_segs(stage, dicom_source, lesion_img, organ_img, organ_names,
                                     result))
            report["files"] = sorted(names.values()) + ["report.json"]
        atomic_write_text(stage / "report.json", to_json(report))
        names["report_json"] = "report.json"
    log.info("report written to %s", out_dir)
    return {k: out_dir / v for k, v in names.items()}


def report_text(report_json: str | os.PathLike) -> list[str]:
    """A few lines a command prints about a written report: the study header, the totals with
    units and the lesions, highest SUVmax first (at most 10)."""
    rep = json.loads(Path(report_json).read_text(encoding="utf-8"))
    lines = [f"{k}: {v}" for k, v in header_lines(rep.get("study") or {}).items()]
    s = rep.get("summary") or {}
    if s.get("lesion_count") is not None:
        lines.append(f"{s['lesion_count']} lesion(s): TMTV {fmt(s['tmtv_ml'])} mL, "
                     f"TTLG {fmt(s['ttlg'])} SUVbw*mL")
        rows = {r["lesion_id"]: r for r in rep.get("lesions") or []}
        for i in rep.get("lesion_ids_by_suvmax", [])[:10]:
            r = rows[i]
            site = f" in {r['organ']}" if r.get("organ") else ""
            lines.append(f"  lesion {i}{site}: SUVmax {fmt(r['suv_max'])} SUVbw, SUVpeak "
                         f"{fmt(r['suv_peak'])} SUVbw, MTV {fmt(r['volume_ml'])} mL, "
                         f"TLG {fmt(r['tlg'])} SUVbw*mL")
    return lines
