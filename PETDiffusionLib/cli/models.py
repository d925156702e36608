"""`petdiffusion models [list|show|verify] [MODEL]`: the shipped models, a card, a hash check."""
from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("models", help="list shipped models, show a model card, verify weights")
    p.add_argument("action", nargs="?", choices=["list", "show", "verify"], default="list")
    p.add_argument("model", nargs="?", help="model id or folder (show, verify)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_models)


def _models(args) -> int:
    # deliberate lazy import: the model registry imports torch, which `petdiffusion --help` must not
    from PETDiffusionLib.models.card import read_card
    from PETDiffusionLib.models.registry import list_models, resolve_model, verify_weights
    if args.action == "list":
        models = list_models()
        if args.json:
            print(json.dumps(models, indent=2))
        elif not models:
            print("no models installed")
        else:
            print(f"{'id':32s} {'task':18s} {'version':10s} path")
            for m in models:
                print(f"{m['id']:32s} {m['task']:18s} {m['version']:10s} {m['path']}")
        return 0
    if not args.model:
        print(f"petdiffusion models {args.action}: give a model id or folder")
        return 1
    folder = resolve_model(args.model)
    card = read_card(folder)
    if args.action == "show":
        print(json.dumps(card, indent=2))
        return 0
    verify_weights(folder, card)  # raises ModelError (exit status 2) on a mismatch
    print(f"{card['id']}: weights match sha256 {card['weights_sha256']}")
    return 0
