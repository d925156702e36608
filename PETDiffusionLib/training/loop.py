"""The training loop every task's recipe uses.

AdamW, cosine learning rate with linear warm-up, gradient accumulation, EMA of the weights, AMP on
CUDA only, periodic validation, resumable checkpoints, a tqdm bar with loss and ETA, export of the
EMA weights as a model folder, and PyTorch DDP when launched under ``torchrun`` (gloo on CPU, NCCL on
CUDA). Nothing home-made for distribution (ARCHITECTURE.md, "Scale").

Checkpoint layout in ``run_dir/checkpoint/`` (written atomically as a whole folder):
    weights.safetensors   the networks, keys "<net>.<param>"
    ema.safetensors       their EMA
    state.pt              optimizer, LR scheduler, grad scaler, step and RNG states; our own file,
                          read back with ``torch.load(weights_only=True)`` (no pickled code)
``run_dir/metrics.jsonl`` gets one JSON line per logged step and per validation.

Data: a DataLoader / re-iterable of batches, a ``Dataset`` (the Trainer builds the DataLoader), or a
batch function ``batch_fn(step, rng) -> batch`` called once per micro-step with a numpy Generator
seeded from (seed, rank, step, micro-step): the data of a step does not depend on whether the run was
resumed, and differs per DDP rank. Recipes that draw random slices or patches use the latter.

Loss: ``loss_fn(batch, networks)`` or ``loss_fn(batch, networks, info)`` with ``info`` a
:class:`StepInfo` (step, max_steps, progress = step / max_steps, and generators seeded by step), so
warm-ups such as AMDiff's lambda_warm are keyed to steps, never to wall-clock time.

Multi-network recipes (CPDM: autoencoder, attention, latents, bridge) run as :class:`Stage` s through
:func:`run_stages`: one folder per stage, a stage is done when its ``summary.json`` exists.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
import inspect
from typing import Any, Callable, Iterable, Iterator

import numpy as np

import torch
import torch.distributed as dist
import torch.nn as nn
from safetensors.torch import load_file, save_file

from PETDiffusionLib.device import autocast, choose_device
from PETDiffusionLib.errors import InputError
from PETDiffusionLib.io.atomic import staging_dir
from PETDiffusionLib.models.registry import save_model_folder, state_dict_of

log = logging.getLogger(__name__)

LossFn = Callable[..., tuple[torch.Tensor, dict[str, float]]]
ValFn = Callable[[dict[str, nn.Module], int], dict[str, float]]
BatchFn = Callable[[int, np.random.Generator], Any]


@dataclass(frozen=True)
class StepInfo:
    """What a three-argument ``loss_fn(batch, networks, info)`` learns about the current step."""
    step: int                      # 0-based index of the optimizer step being taken
    max_steps: int
    generator: torch.Generator     # seeded from (seed, rank, step): noise draws replay on resume
    rng: np.random.Generator

    @property
    def progress(self) -> float:
        """step / max_steps in [0, 1): the training progress e / e_max of warm-up schedules."""
        return self.step / max(1, self.max_steps)


@dataclass
class TrainConfig:
    """Training hyper-parameters. Defaults: Adam(W) at lr 1e-4 as in CPDM §5.1 and AMDiff §3.4;
    EMA decay 0.9999 as in DDPM (Ho et al. 2020, appendix B) is too slow for short runs, so 0.999."""

    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)  # Adam defaults, Kingma & Ba 2015
    max_steps: int = 1000          # optimizer steps
    batch_size: int = 8            # per process, per micro-step (used when given a Dataset)
    grad_accum: int = 1            # micro-steps per optimizer step
    warmup: int = 0                # linear warm-up steps, then cosine decay to min_lr_ratio * lr
    min_lr_ratio: float = 0.0
    ema_decay: float = 0.999
    grad_clip: float = 1.0         # max gradient norm; 0 disables
    val_every: int = 0             # 0: validate only at the end (if val_fn is given)
    ckpt_every: int = 0            # 0: checkpoint only at the end
    log_every: int = 10
    seed: int = 0
    num_threads: int = 0           # torch CPU threads; 0 leaves torch's default
    num_workers: int = 0           # DataLoader workers (when given a Dataset)
    amp: bool = True               # autocast on CUDA only (bf16 where supported, else fp16)
    device: str = "auto"
    progress_bar: bool = True
    lr_per_network: dict[str, float] = field(default_factory=dict)  # one parameter group each
    frozen: list[str] = field(default_factory=list)  # networks kept in eval mode, not trained
    max_minutes: float = 0.0       # 0: no limit; else checkpoint and stop (resume continues)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown training settings {sorted(unknown)}; known: {sorted(names)}")
        d = dict(d)
        if "betas" in d:
            d["betas"] = tuple(d["betas"])
        return cls(**d)


def warmup_cosine(step: int, warmup: int, max_steps: int, min_ratio: float) -> float:
    """LR multiplier: linear warm-up (Goyal et al. 2017) then cosine decay (Loshchilov & Hutter
    2017, SGDR eq. 5 without restarts)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def init_process_group(device: str | None = "auto") -> bool:
    """Join the torchrun process group when launched under torchrun (NCCL on CUDA, gloo on CPU);
    True when this call started it."""
    if distributed_env()[1] <= 1 or dist.is_initialized():
        return False
    backend = "nccl" if torch.cuda.is_available() and device != "cpu" else "gloo"
    dist.init_process_group(backend=backend)
    return True


def distributed_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from the variables torchrun sets; (0, 1, 0) otherwise."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


class Trainer:
    """Trains ``networks`` by minimising ``loss_fn(batch, networks) -> (loss, logs)``.

    ``train_loader``: a DataLoader or any re-iterable of batches (used as is; under DDP it should
    already shard), or a ``torch.utils.data.Dataset`` (the Trainer builds the DataLoader, with a
    DistributedSampler under DDP). ``val_fn(ema_networks, step) -> {metric: value}`` runs on rank 0.
    The networks given to ``loss_fn`` are DDP-wrapped under torchrun (call them, don't reach into
    their attributes).
    """

    def __init__(self, config: TrainConfig, networks: dict[str, nn.Module], loss_fn: LossFn,
                 train_loader: Iterable | torch.utils.data.Dataset, val_fn: ValFn | None = None,
                 run_dir: str | os.PathLike = "runs/train"):
        self.config, self.loss_fn, self.val_fn = config, loss_fn, val_fn
        self.run_dir = Path(run_dir)
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        self.rank, self.world_size, local_rank = distributed_env()
        self.distributed = self.world_size > 1
        self._owns_group = init_process_group(config.device)
        device = choose_device(config.device)
        if device.type == "cuda" and self.distributed:
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        self.device = device
        torch.manual_seed(config.seed)

        self.networks = {k: v.to(device) for k, v in networks.items()}
        unknown = (set(config.frozen) | set(config.lr_per_network)) - set(self.networks)
        if unknown:
            raise ValueError(f"frozen / lr_per_network name unknown networks {sorted(unknown)}")
        for name in config.frozen:
            self.networks[name].eval().requires_grad_(False)
        self.trained = {}
        for name, net in self.networks.items():
            trainable = any(p.requires_grad for p in net.parameters())
            if self.distributed and trainable:
                from torch.nn.parallel import DistributedDataParallel as DDP
                ids = [device.index] if device.type == "cuda" else None
                self.trained[name] = DDP(net, device_ids=ids)  # broadcasts rank 0's weights
            else:
                self.trained[name] = net
        # after DDP has broadcast rank 0's weights, so that every rank's EMA starts the same
        self.ema = {k: copy.deepcopy(v).eval().requires_grad_(False) for k, v in self.networks.items()}
        groups = []
        for name, net in self.networks.items():
            ps = [p for p in net.parameters() if p.requires_grad]
            if ps:
                groups.append({"params": ps, "lr": float(config.lr_per_network.get(name, config.lr)),
                               "name": name})
        if not groups:
            raise ValueError("none of the networks has trainable parameters")
        self.params = [p for g in groups for p in g["params"]]
        # AdamW with weight_decay 0 is Adam (Kingma & Ba 2015), the optimiser of AMDiff and CPDM
        self.optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=config.betas,
                                           weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: warmup_cosine(s, config.warmup, config.max_steps,
                                                    config.min_lr_ratio))
        self.use_amp = bool(config.amp and device.type == "cuda")
        fp16 = self.use_amp and not torch.cuda.is_bf16_supported()
        self.scaler = torch.amp.GradScaler("cuda", enabled=fp16)
        self.step = 0
        self._loss_takes_info = _positional_arity(loss_fn) >= 3
        self.loader = self._make_loader(train_loader)
        self._epoch, self._batch_in_epoch = 0, 0

    # ----------------------------------------------------------------------------- data
    def _make_loader(self, data):
        if callable(data) and not isinstance(data, (torch.utils.data.Dataset,
                                                    torch.utils.data.DataLoader)) \
                and not hasattr(data, "__iter__"):
            return data  # a batch function batch_fn(step, rng)
        if isinstance(data, torch.utils.data.Dataset) and not isinstance(data, torch.utils.data.IterableDataset):
            sampler = None
            if self.distributed:
                sampler = torch.utils.data.DistributedSampler(data, num_replicas=self.world_size,
                                                              rank=self.rank, seed=self.config.seed)
            g = torch.Generator().manual_seed(self.config.seed + self.rank)
            return torch.utils.data.DataLoader(data, batch_size=self.config.batch_size,
                                               shuffle=sampler is None, sampler=sampler,
                                               num_workers=self.config.num_workers, drop_last=False,
                                               generator=g)
        return data

    def _step_rng(self, micro: int) -> np.random.Generator:
        return np.random.default_rng([self.config.seed, self.rank, self.step, micro])

    def _batches(self) -> Iterator:
        """Endless batches; each epoch's order depends only on (seed, epoch), and a resumed run
        skips the batches its epoch had already used, so resuming replays the same data."""
        if callable(self.loader) and not hasattr(self.loader, "__iter__"):
            micro = 0
            while True:  # a batch function: the batch of (step, micro-step) is fixed by its seed
                yield self.loader(self.step, self._step_rng(micro))
                micro = (micro + 1) % max(1, self.config.grad_accum)
        while True:
            sampler = getattr(self.loader, "sampler", None)
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(self._epoch)
            gen = getattr(self.loader, "generator", None)
            if isinstance(gen, torch.Generator):
                gen.manual_seed(self.config.seed + 7919 * self._epoch + self.rank)
            empty = True
            for i, batch in enumerate(self.loader):
                empty = False
                if i < self._batch_in_epoch:
                    continue
                self._batch_in_epoch = i + 1
                yield batch
            if empty:
                raise ValueError("the training data is empty")
            self._epoch += 1
            self._batch_in_epoch = 0

    def _to_device(self, batch):
        if isinstance(batch, torch.Tensor):
            return batch.to(self.device, non_blocking=True)
        if isinstance(batch, dict):
            return {k: self._to_device(v) for k, v in batch.items()}
        if isinstance(batch, (list, tuple)):
            return type(batch)(self._to_device(v) for v in batch)
        return batch

    # ----------------------------------------------------------------------------- loop
    def fit(self, resume: bool = False) -> dict[str, float]:
        """Train up to ``config.max_steps``; with ``resume`` continue from run_dir's checkpoint."""
        cfg = self.config
        if resume:
            self.load_checkpoint()
        elif self.step == 0 and (self.checkpoint_dir / "state.pt").is_file():
            raise InputError("the run folder already holds a checkpoint: pass --resume to "
                             "continue it, or choose another --run-dir", self.run_dir)
        if self.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        batches = self._batches()
        bar = None
        if cfg.progress_bar and self.rank == 0:
            from tqdm import tqdm
            bar = tqdm(total=cfg.max_steps, initial=self.step, desc="train", unit="step",
                       file=sys.stderr, dynamic_ncols=True)
        logs: dict[str, float] = {}
        t0 = time.monotonic()
        try:
            while self.step < cfg.max_steps:
                if cfg.max_minutes and time.monotonic() - t0 > 60.0 * cfg.max_minutes:
                    log.warning("stopping at step %d after the %.0f-minute limit; resume continues",
                                self.step, cfg.max_minutes)
                    break
                logs = self._optimizer_step(batches)
                self.step += 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{logs['loss']:.4g}", lr=f"{logs['lr']:.2e}")
                if self.rank == 0 and (self.step % max(1, cfg.log_every) == 0
                                       or self.step == cfg.max_steps):
                    self._append_metrics({"step": self.step, "time_s": time.monotonic() - t0, **logs})
                if cfg.val_every and self.step % cfg.val_every == 0 and self.step < cfg.max_steps:
                    self.validate()
                if cfg.ckpt_every and self.step % cfg.ckpt_every == 0 and self.step < cfg.max_steps:
                    self.save_checkpoint()
            if self.val_fn is not None and self.step >= cfg.max_steps:
                logs.update(self.validate())
            self.save_checkpoint()
        finally:
            if bar is not None:
                bar.close()
        return logs

    def _optimizer_step(self, batches: Iterator) -> dict[str, float]:
        cfg = self.config
        for name, net in self.trained.items():
            net.train(name not in cfg.frozen)
        self.optimizer.zero_grad(set_to_none=True)
        total, sums = 0.0, {}
        for micro in range(cfg.grad_accum):
            batch = self._to_device(next(batches))
            last = micro == cfg.grad_accum - 1
            with contextlib.ExitStack() as stack:
                if not last:  # DDP: all-reduce gradients only on the last micro-step
                    for net in self.trained.values():
                        if hasattr(net, "no_sync"):
                            stack.enter_context(net.no_sync())
                with autocast(self.device) if self.use_amp else contextlib.nullcontext():
                    if self._loss_takes_info:
                        loss, logs = self.loss_fn(batch, self.trained, self._step_info(micro))
                    else:
                        loss, logs = self.loss_fn(batch, self.trained)
                self.scaler.scale(loss / cfg.grad_accum).backward()
            total += float(loss.detach()) / cfg.grad_accum
            for k, v in (logs or {}).items():
                sums[k] = sums.get(k, 0.0) + float(v) / cfg.grad_accum
        if cfg.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self._update_ema()
        return {"loss": total, "lr": self.optimizer.param_groups[0]["lr"], **sums}

    def _step_info(self, micro: int) -> StepInfo:
        seed = int(np.random.default_rng([self.config.seed, self.rank, self.step, micro, 1])
                   .integers(2 ** 62))
        gen = torch.Generator(device=self.device if self.device.type == "cuda" else "cpu")
        gen.manual_seed(seed)
        return StepInfo(self.step, self.config.max_steps, gen, self._step_rng(1000 + micro))

    @torch.no_grad()
    def _update_ema(self) -> None:
        # decay ramps up with the number of updates, as in tf.train.ExponentialMovingAverage
        # (num_updates): min(decay, (1 + n) / (10 + n)), so short runs are not dominated by init.
        decay = min(self.config.ema_decay, (1 + self.step) / (10 + self.step))
        for name, net in self.networks.items():
            ema = self.ema[name]
            for pe, p in zip(ema.parameters(), net.parameters()):
                pe.lerp_(p.detach(), 1.0 - decay)
            for be, b in zip(ema.buffers(), net.buffers()):
                be.copy_(b)

    def validate(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.val_fn is not None and self.rank == 0:
            with torch.no_grad():
                out = {f"val_{k}": float(v) for k, v in self.val_fn(self.ema, self.step).items()}
            self._append_metrics({"step": self.step, **out})
            log.info("step %d validation: %s", self.step, out)
        self._barrier()
        return out

    def _append_metrics(self, record: dict) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def _barrier(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.barrier()

    # ----------------------------------------------------------------------------- checkpoints
    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoint"

    def save_checkpoint(self) -> Path:
        if self.rank == 0:
            with staging_dir(self.checkpoint_dir) as stage:
                save_file(state_dict_of(self.networks), str(stage / "weights.safetensors"))
                save_file(state_dict_of(self.ema), str(stage / "ema.safetensors"))
                torch.save({"step": self.step, "epoch": self._epoch,
                            "batch_in_epoch": self._batch_in_epoch,
                            "optimizer": self.optimizer.state_dict(),
                            "scheduler": self.scheduler.state_dict(),
                            "scaler": self.scaler.state_dict(),
                            "torch_rng": torch.get_rng_state(),
                            "config": dataclasses.asdict(self.config)}, stage / "state.pt")
            log.info("checkpoint at step %d in %s", self.step, self.checkpoint_dir)
        self._barrier()
        return self.checkpoint_dir

    def load_checkpoint(self) -> int:
        """Restore weights, EMA, optimizer, scheduler and step from run_dir; returns the step."""
        ckpt = self.checkpoint_dir
        if not (ckpt / "state.pt").is_file():
            raise FileNotFoundError(f"{ckpt}: no checkpoint to resume from")
        for nets, fname in ((self.networks, "weights.safetensors"), (self.ema, "ema.safetensors")):
            tensors = load_file(str(ckpt / fname), device=str(self.device))
            for name, net in nets.items():
                prefix = f"{name}."
                net.load_state_dict({k[len(prefix):]: v for k, v in tensors.items()
                                     if k.startswith(prefix)}, strict=True)
        state = torch.load(ckpt / "state.pt", map_location=self.device, weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"].cpu())
        self.step, self._epoch = int(state["step"]), int(state["epoch"])
        self._batch_in_epoch = int(state["batch_in_epoch"])
        log.info("resumed from %s at step %d", ckpt, self.step)
        return self.step

    # ----------------------------------------------------------------------------- export
    def export(self, folder: str | os.PathLike, card: dict) -> Path:
        """Save the EMA weights as a model folder (rank 0 writes; every rank returns the path)."""
        folder = Path(folder)
        if self.rank == 0:
            card = dict(card)
            card.setdefault("training", {})
            card["training"] = {**card["training"], "steps": self.step,
                                "config": dataclasses.asdict(self.config)}
            save_model_folder(folder, self.ema, card)
        self._barrier()
        return folder

    def close(self) -> None:
        """Leave the process group if this Trainer started it."""
        if self._owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self._owns_group = False


def _positional_arity(fn: Callable) -> int:
    """How many positional arguments ``fn`` takes (a large number for ``*args``)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return 2
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return 99
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)


# ------------------------------------------------------------------------------------- recipes
@dataclass(frozen=True)
class TrainOptions:
    """What ``petdiffusion train <task> --config F [--resume] [--device D] [--stage S] [--run-dir R]``
    hands to a recipe's ``train(config, options)``."""
    config_path: str = ""
    resume: bool = False
    device: str | None = None
    stages: list[str] | None = None
    run_dir: str | None = None

    def command(self, task: str) -> str:
        """The reproduction command a model card cites."""
        cmd = f"petdiffusion train {task} --config {self.config_path}"
        if self.stages:
            cmd += f" --stage {','.join(self.stages)}"
        return cmd


@dataclass(frozen=True)
class Stage:
    """One step of a multi-network recipe: ``run(stage_dir) -> summary`` (a training stage builds its
    own Trainer with ``run_dir=stage_dir``; data preparation and export are stages too).

    ``rank0_only``: under torchrun, a stage that writes shared files (data preparation, latents,
    export) runs on rank 0 while the other ranks wait at a barrier; training stages run on every
    rank (DDP)."""
    name: str
    run: Callable[[Path], dict]
    rank0_only: bool = False


def stage_dir(run_dir: str | os.PathLike, name: str) -> Path:
    return Path(run_dir) / name.replace(":", "_")


def stage_done(run_dir: str | os.PathLike, name: str) -> bool:
    return (stage_dir(run_dir, name) / "summary.json").is_file()


def _write_summary(path: Path, summary: dict | None, t0: float) -> dict:
    summary = dict(summary or {})
    summary.setdefault("seconds", round(time.monotonic() - t0, 1))
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=2, default=str))
    os.replace(tmp, path)
    return summary


def run_stages(run_dir: str | os.PathLike, stages: list[Stage],
               only: list[str] | None = None) -> dict[str, dict]:
    """Run the stages in order, each in ``run_dir/<name>/``; returns {name: summary}.

    Without ``only``, a stage whose ``summary.json`` exists is skipped (its summary is read back), so
    calling again continues an interrupted recipe; ``only`` runs exactly the named stages (again, if
    they were done). A stage's summary is written atomically when it returns. Whether an unfinished
    training stage resumes its checkpoint is the stage's own choice (``Trainer.fit(resume=...)``,
    from ``TrainOptions.resume``).
    """
    names = [s.name for s in stages]
    distributed = distributed_env()[1] > 1
    if distributed:
        init_process_group()
    if only:
        unknown = [n for n in only if n not in names]
        if unknown:
            raise InputError(f"unknown stage(s) {', '.join(unknown)}; stages: {', '.join(names)}")
    # which stages are done is decided once, before any stage runs, and (under torchrun) before
    # any rank can write a summary: every rank then takes the same path through the stages
    done = {st.name: (stage_dir(run_dir, st.name) / "summary.json").is_file() for st in stages}
    if distributed:
        dist.barrier()
    out: dict[str, dict] = {}
    for st in stages:
        folder = stage_dir(run_dir, st.name)
        summary_path = folder / "summary.json"
        if only is not None and st.name not in only:
            if done[st.name]:
                out[st.name] = json.loads(summary_path.read_text())
            continue
        if only is None and done[st.name]:
            out[st.name] = json.loads(summary_path.read_text())
            log.info("stage %s: done before (%s), skipped", st.name, summary_path)
            continue
        folder.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        rank = distributed_env()[0]
        if st.rank0_only and distributed:
            if rank == 0:
                _write_summary(summary_path, st.run(folder), t0)
            dist.barrier()                       # the other ranks wait for rank 0's files
            summary = json.loads(summary_path.read_text())
        else:
            summary = st.run(folder)
            if rank == 0:
                summary = _write_summary(summary_path, summary, t0)
            if distributed:
                dist.barrier()
        out[st.name] = summary
        log.info("stage %s finished in %.1f s", st.name, time.monotonic() - t0)
    return out


def train_in_stages(config: dict, options: TrainOptions | None,
                    build_stages: Callable[[dict, TrainOptions], list[Stage]]) -> int:
    """The ``train(config, options)`` of a recipe whose config is a JSON object: the run folder
    (``--run-dir`` or the config's ``run_dir``), the CPU threads (config ``threads``, default 1),
    then :func:`run_stages` over ``build_stages(config, options)`` (``--stage`` picks some)."""
    options = options or TrainOptions()
    cfg = dict(config)
    run_dir = Path(options.run_dir or cfg["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(int(cfg.get("threads", 1)))
    run_stages(run_dir, build_stages(cfg, options), only=options.stages)
    return 0
