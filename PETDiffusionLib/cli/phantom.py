"""`petdiffusion phantom`: simulate PET/CT/MR phantom cohorts (issue 4), or print the population table."""
from __future__ import annotations

import logging
from pathlib import Path

from PETDiffusionLib.errors import InputError

log = logging.getLogger(__name__)


def register(sub) -> None:
    p = sub.add_parser("phantom", help="simulate synthetic PET/CT/MR cases (training and test data)")
    p.add_argument("--out", type=Path, help="output folder: DIR/case_XXXX/ per case")
    p.add_argument("--n", type=int, default=1, help="number of cases")
    p.add_argument("--seed", type=int, default=0, help="cohort seed: the same seed gives the same cases")
    p.add_argument("--start", type=int, default=0, help="index of the first case")
    p.add_argument("--size", type=int, default=128, help="in-plane matrix (FOV 512 mm)")
    p.add_argument("--slices", type=int, default=160, help="number of slices (FOV 800 mm)")
    p.add_argument("--tracer", choices=["fdg", "psma"], default="fdg")
    p.add_argument("--head", action="store_true", help="include the head (brain): the 800 mm FOV then starts above the vertex and ends near the pelvis")
    p.add_argument("--images", default="ac,low,nac,delayed,mr",
                   help="derived images to make (comma list of ac,low,nac,delayed,mr); "
                        "ct, suv_true, organs and lesions are always written")
    p.add_argument("--fractions", default="50,25,10,5", help="low-count levels, percent of standard")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 for background cohorts)")
    p.add_argument("--population-table", action="store_true",
                   help="print mean organ volume and SUVmean by sex over --n phantoms vs TotalGen Table 1 "
                        "(no acquisition simulated)")
    p.add_argument("--montage-from", type=Path, metavar="CASE_DIR",
                   help="write a montage PNG of an existing case folder to --out (e.g. docs/phantom_montage.png)")
    p.add_argument("--progress", choices=["none", "json", "bar"], default="bar")
    p.set_defaults(func=run)


def _config(args):
    from PETDiffusionLib.phantom.case import IMAGE_GROUPS, PhantomConfig
    from PETDiffusionLib.physics.acquisition import AcquisitionConfig
    images = tuple(s.strip() for s in args.images.split(",") if s.strip())
    bad = [s for s in images if s not in IMAGE_GROUPS]
    if bad:
        raise InputError(f"unknown --images {','.join(bad)} (choose from {','.join(IMAGE_GROUPS)})")
    try:
        fractions = tuple(int(f) for f in args.fractions.split(",") if f.strip())
    except ValueError as exc:
        raise InputError(f"--fractions must be integers in percent, got {args.fractions!r}") from exc
    if not fractions or any(not 0 < f < 100 for f in fractions):
        raise InputError("--fractions must be percentages between 1 and 99")
    if args.size < 16 or args.slices < 16:
        raise InputError("--size and --slices must be at least 16")
    return PhantomConfig(size=args.size, slices=args.slices, tracer=args.tracer, include_head=args.head,
                         images=images, acquisition=AcquisitionConfig(fractions=fractions))


def run(args) -> int:
    import torch

    from PETDiffusionLib.progress import Progress
    torch.set_num_threads(max(1, args.threads))
    cfg = _config(args)
    if args.n < 1:
        raise InputError("--n must be at least 1")
    if args.population_table:
        from PETDiffusionLib.phantom.population import format_population_table, population_table
        print(format_population_table(population_table(args.n, args.seed, cfg)))
        return 0
    if args.out is None:
        raise InputError("--out DIR is required (or use --population-table)")
    if args.montage_from is not None:
        from PETDiffusionLib.phantom.montage import montage_from_case_dir
        if not (args.montage_from / "case.json").is_file():
            raise InputError("not a phantom case folder (no case.json)", args.montage_from)
        print(montage_from_case_dir(args.montage_from, args.out))
        return 0
    from PETDiffusionLib.phantom.case import generate_cohort
    progress = Progress(args.progress)
    paths = generate_cohort(args.out, args.n, args.seed, cfg, progress=progress, start=args.start)
    progress.close()
    print(f"{len(paths)} cases in {args.out} (seed {args.seed}); marker {args.out / 'COMPLETE'}")
    return 0
