"""`python -m PETDiffusionLib ...` is the same as the `petdiffusion` command."""
from PETDiffusionLib.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
