"""`petdiffusion report`: report.pdf + report.json + CSV tables for one PET in SUV."""
from __future__ import annotations

from PETDiffusionLib.cli.quantify import add_input_args, lesions_and_thresholds, load_inputs
from PETDiffusionLib.io.deid import deidentify_series
from PETDiffusionLib.report.dicom_seg import check_source_geometry, source_series
from PETDiffusionLib.report.pdf import make_report, report_text


def register(sub) -> None:
    p = sub.add_parser("report", help="PDF/JSON/CSV report (MIPs, lesion and organ tables)",
                       description="Write report.pdf, report.json and the CSV tables for a PET in "
                                   "SUV. Research use only, not for diagnosis.")
    add_input_args(p)
    p.add_argument("--synthetic", action="store_true",
                   help="the PET is a model output: print the synthetic banner")
    p.add_argument("--task", default="quantify", help="task name printed in the header")
    p.add_argument("--model-id", default=None)
    p.add_argument("--model-version", default=None)
    p.add_argument("--patient-id", default="anonymous", help="pseudonymous ID (never a real name)")
    p.add_argument("--study-date", default=None)
    p.add_argument("--dicom-source", metavar="DICOM_DIR", default=None,
                   help="the PET's DICOM series: also write lesions_seg.dcm / organs_seg.dcm (DICOM SEG) "
                        "and lesions_sr.dcm (DICOM SR), de-identified (DICOM PS3.15 basic profile: "
                        "names, IDs, birth date, institution, accession number, private tags go, "
                        "UIDs are replaced; PatientID becomes --patient-id)")
    p.add_argument("--keep-identity", action="store_true",
                   help="keep the source's patient identity and UIDs in the DICOM SEG/SR (for "
                        "sites that export back into their own PACS)")
    p.set_defaults(func=_report)


def _report(args) -> int:
    inputs = load_inputs(args)
    source = None
    if args.dicom_source:
        source = source_series(args.dicom_source)
        check_source_geometry(source)
        if not args.keep_identity:
            source = deidentify_series(source, pseudo_id=args.patient_id)
    lesions, thresholds, _ = lesions_and_thresholds(inputs, args.threshold)
    paths = make_report(args.out, inputs["pet"], lesions, inputs["organs"], inputs["organ_names"],
                        task=args.task, model_id=args.model_id, model_version=args.model_version,
                        synthetic=args.synthetic, patient_id=args.patient_id,
                        study_date=args.study_date, thresholds=thresholds, dicom_source=source)
    for line in report_text(paths["report_json"]):   # study header, totals with units, lesions by SUVmax
        print(line)
    print(f"wrote {', '.join(sorted(p.name for p in paths.values()))} in {args.out}")
    return 0
