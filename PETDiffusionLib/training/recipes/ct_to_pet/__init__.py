"""Training recipe for the ct-to-pet task (CPDM, Nguyen et al. 2024, arXiv:2410.21932).

    petdiffusion train ct-to-pet --config configs/ct_to_pet.json [--resume] [--device D] [--stage S]

runs these stages through :func:`PETDiffusionLib.training.loop.run_stages` (one folder each in
``run_dir``; a stage with a ``summary.json`` is done and skipped on the next call; ``--stage`` runs
exactly the named ones again; ``--resume`` continues a training stage from its checkpoint):

    prepare       cohort cases -> working grid, slices cropped to ``slice_size``; tissue floor (data.py)
    prepare_real  only with ``real_pairs`` in the config: real PET/CT crops                (data.py)
    autoencoder, attention                                                                 (stages.py)
    latents       every slice encoded, maps pooled, latent scale                           (stages.py)
    latents_real  only with ``real_pairs``: latents of the real crops                      (stages.py)
    bridge:cpdm, bridge:no_sigma, bridge:no_mu, regression                                 (stages.py)
    export        model folders of CPDM and its baselines, the card citing the command     (card.py)

Every network trains through ``training.loop.Trainer`` (AdamW without weight decay = Adam, constant
learning rate, gradient clipping, checkpoints, one metrics.jsonl per stage). Config keys: the data
(cohort, target, max_cases, working_spacing_mm, slice_size, context, kvp, attention_suv_threshold,
augment, real_pairs), one block per network (autoencoder, attention, bridge: sizes, steps, batch, lr),
``seed``, ``threads``, and ``trainer`` (TrainConfig settings for every stage). The configs set
``trainer.ckpt_every`` 200 steps: about a minute at the measured 0.2-0.37 s per step on one CPU
thread (shipped card, training.reproduce), the recipe's former 60-second checkpoint interval.
"""
from __future__ import annotations

from pathlib import Path


from PETDiffusionLib.training.loop import Stage, TrainOptions, train_in_stages
from PETDiffusionLib.training.recipes.ct_to_pet import card, data
from PETDiffusionLib.training.recipes.ct_to_pet import stages as net_stages

STAGES = ["prepare", "prepare_real", "autoencoder", "attention", "latents", "latents_real",
          *net_stages.BRIDGE_STAGES, "export"]
"""Every stage in order; the two ``*_real`` ones only when the config names ``real_pairs``."""


def build_stages(cfg: dict, options: TrainOptions) -> list[Stage]:
    """The recipe's stages for this config (each ``run(stage_dir) -> summary``)."""
    run_dir = Path(options.run_dir or cfg["run_dir"])
    real = bool(cfg.get("real_pairs"))
    command = options.command("ct-to-pet")

    def bridge(name: str) -> Stage:
        return Stage(name, lambda d: net_stages.train_bridge(cfg, options, run_dir, d, name))

    out = [Stage("prepare", lambda d: data.prepare(cfg, d), rank0_only=True)]
    if real:
        out.append(Stage("prepare_real", lambda d: data.prepare_real(cfg, d), rank0_only=True))
    out += [Stage("autoencoder", lambda d: net_stages.train_autoencoder(cfg, options, run_dir, d)),
            Stage("attention", lambda d: net_stages.train_attention(cfg, options, run_dir, d)),
            Stage("latents", lambda d: net_stages.encode_latents(cfg, run_dir, d),
                  rank0_only=True)]
    if real:
        out.append(Stage("latents_real", lambda d: net_stages.encode_real_latents(cfg, run_dir, d),
                         rank0_only=True))
    out += [bridge(name) for name in net_stages.BRIDGE_STAGES]
    out.append(Stage("export", lambda d: card.export(cfg, run_dir, command), rank0_only=True))
    return out


def train(config: dict, options: TrainOptions | None = None) -> int:
    """Entry point of ``petdiffusion train ct-to-pet``: runs the stages not yet done (or ``--stage``)."""
    return train_in_stages(config, options, build_stages)
