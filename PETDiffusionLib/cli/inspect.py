"""`petdiffusion inspect DIR`: the DICOM series in a folder and whether SUV can be computed."""
from __future__ import annotations

import argparse

from PETDiffusionLib.io.dicom import find_series


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="list the DICOM series in a folder (modality, size, spacing, "
                                       "whether SUV can be computed)")
    p.add_argument("folder", help="folder of DICOM files (searched recursively)")
    p.set_defaults(func=_inspect)


def _inspect(args) -> int:
    series = find_series(args.folder)
    rows = [("modality", "description", "slices", "size", "spacing (mm)", "SUV", "notes")]
    for s in series:
        if s.suv_ok is None:
            suv = "-"
        elif s.suv_ok:
            suv = "yes"
        else:
            # tag names from MissingTagError, or the one message of an implausible/malformed header
            tags = all("(" in m and len(m) < 90 for m in s.suv_missing)
            suv = ("no: missing " if tags else "no: ") + ", ".join(s.suv_missing)
        spacing = "x".join(f"{v:.3g}" for v in s.spacing) if s.spacing else "?"
        rows.append((s.modality, s.description or "(none)", str(s.n_slices),
                     "x".join(str(v) for v in s.size), spacing, suv, "; ".join(s.problems + s.warnings)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + ("  " + r[-1] if r[-1] else ""))
    print(f"{len(series)} series in {args.folder}")
    return 0
