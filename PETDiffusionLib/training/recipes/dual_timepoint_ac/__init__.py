"""Training recipe for the dual-timepoint-ac task (STMDiff, Li et al.; seeds/STMDiff_dual_time_point_AC).

    petdiffusion train dual-timepoint-ac --config configs/dual_timepoint_ac.json [--resume] [--stage S]

Stages (``training.loop.run_stages``; one folder each in ``run_dir``, done when its summary.json
exists): prepare (data.py), matching, autoencoder, latents, diffusion:k<K> for every K of
``diffusion.k_values`` (K = 0: no CT prior), decoder:k<K> for every K when the config has a
``decoder`` block (the decoder fine-tuned on diffusion K's latents), detail:k<K> for every K when
it has a ``detail`` block (the NAC-guided refinement head, networks.DetailHead), unet (the NAC -> AC baseline),
export (card.py).

``stages_from_model`` ({"model": MODEL_DIR, "stages": ["matching", "autoencoder"]}) takes those
stages' networks from an exported model folder instead of training them (the stage's summary names
the folder and its weights' sha256), so a run can retrain the later stages on the same encoders;
``diffusion:kK`` and ``decoder:kK`` can be taken too, from a folder of that k (its denoiser and
its fine-tuned autoencoder), so a run can train a new detail head on a shipped diffusion.
"""
from __future__ import annotations

from pathlib import Path


from PETDiffusionLib.training.loop import Stage, TrainOptions, train_in_stages
from PETDiffusionLib.training.recipes.dual_timepoint_ac import card, data, stages


def build_stages(cfg: dict, options: TrainOptions) -> list[Stage]:
    run_dir = Path(options.run_dir or cfg["run_dir"])
    command = options.command("dual-timepoint-ac")

    reuse = cfg.get("stages_from_model") or {}

    def trained(name: str, fn) -> Stage:
        if name in reuse.get("stages", ()):
            return Stage(name, lambda d: stages.stage_from_model(cfg, reuse["model"], name, d), rank0_only=True)
        return Stage(name, fn)

    def diffusion(k: int) -> Stage:
        return trained(f"diffusion:k{k}", lambda d: stages.train_diffusion(cfg, options, run_dir, d, k))

    def decoder(k: int) -> Stage:
        return trained(f"decoder:k{k}", lambda d: stages.train_decoder(cfg, options, run_dir, d, k))

    def detail(k: int) -> Stage:
        return Stage(f"detail:k{k}", lambda d: stages.train_detail(cfg, options, run_dir, d, k))

    return [Stage("prepare", lambda d: data.prepare(cfg, d), rank0_only=True),
            trained("matching", lambda d: stages.train_matching(cfg, options, run_dir, d)),
            trained("autoencoder", lambda d: stages.train_autoencoder(cfg, options, run_dir, d)),
            Stage("latents", lambda d: stages.encode_latents(cfg, run_dir, d), rank0_only=True),
            *[diffusion(int(k)) for k in cfg["diffusion"]["k_values"]],
            *[decoder(int(k)) for k in cfg["diffusion"]["k_values"] if cfg.get("decoder")],
            *[detail(int(k)) for k in cfg["diffusion"]["k_values"] if cfg.get("detail")],
            Stage("unet", lambda d: stages.train_unet(cfg, options, run_dir, d)),
            Stage("export", lambda d: card.export(cfg, run_dir, command), rank0_only=True)]


def train(config: dict, options: TrainOptions | None = None) -> int:
    """Entry point of ``petdiffusion train dual-timepoint-ac``: runs the stages not yet done."""
    return train_in_stages(config, options, build_stages)
