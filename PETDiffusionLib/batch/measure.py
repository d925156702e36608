"""What one study costs, for sizing a cohort run: network evaluations and peak memory.

- :func:`count_forward_calls`: forward hooks on every network of a loaded model (the object a
  task's ``pipeline.load_model`` returns: networks in a tuple, list, dict or named tuple), counting
  each network's calls while a study runs. A counted call is one network evaluation on whatever
  batch the pipeline passed (a batch of 2.5D slices counts once).
- :func:`run_child`: run a function in a fresh Python process and read its peak resident set size
  (Linux ``VmHWM``, proc(5); see there), so that one benchmark's memory is not mixed with
  another's nor with the parent's.

``petdiffusion bench`` (cli/bench.py) and the tasks' bench.py use these.
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from PETDiffusionLib.tasks.runner import load_task_model, run_task

SUBNETWORK_SHARE = 0.1  # this project's choice: below it a child is glue (1x1 convs, embeddings)


def networks_of(model: Any, prefix: str = "") -> dict[str, torch.nn.Module]:
    """The outermost ``nn.Module`` objects inside a loaded model, named by their dict keys or
    named-tuple fields (``{"denoiser": ..., "segmenter": ...}``)."""
    if isinstance(model, torch.nn.Module):
        return {prefix or type(model).__name__: model}
    if isinstance(model, dict):
        items = [(str(k), v) for k, v in model.items()]
    elif isinstance(model, tuple) and hasattr(model, "_fields"):  # a NamedTuple
        items = list(zip(model._fields, model))
    elif isinstance(model, (list, tuple)):
        items = [("", v) for v in model]  # positions carry no meaning: keep the parent's name
    else:
        return {}
    found: dict[str, torch.nn.Module] = {}
    for key, value in items:
        for name, net in networks_of(value, ".".join(p for p in (prefix, key) if p)).items():
            found[name if name not in found else f"{name}#{len(found)}"] = net
    return found


def _batch_size(inputs: tuple) -> int:
    first = inputs[0] if inputs else None
    return int(first.shape[0]) if isinstance(first, torch.Tensor) and first.dim() > 0 else 1


@contextlib.contextmanager
def count_forward_calls(model: Any) -> Iterator[dict[str, dict[str, int]]]:
    """Counts the evaluations of each network of ``model`` while the block runs:
    ``{name: {"calls": forward calls, "items": inputs evaluated (the calls' batch sizes summed)}}``.

    A network used through methods other than ``forward`` (an autoencoder's ``encode`` and
    ``decode``) is counted at its direct sub-networks instead (``autoencoder.encoder``), those
    that hold at least ``SUBNETWORK_SHARE`` of its parameters.
    """
    calls: Counter = Counter()
    items: Counter = Counter()
    handles = []
    nets = networks_of(model)

    def watch(name: str, module: torch.nn.Module) -> None:
        def hook(_module, inputs, _output):
            calls[name] += 1
            items[name] += _batch_size(inputs)
        handles.append(module.register_forward_hook(hook))

    for name, net in nets.items():
        watch(name, net)
        total = sum(p.numel() for p in net.parameters())
        for child_name, child in net.named_children():
            # the sub-networks that hold the work, not the 1x1 convolutions between them
            if sum(p.numel() for p in child.parameters()) >= SUBNETWORK_SHARE * total:
                watch(f"{name}.{child_name}", child)
    counts: dict[str, dict[str, int]] = {}
    try:
        yield counts
    finally:
        for h in handles:
            h.remove()
        for name in nets:
            if calls[name]:
                counts[name] = {"calls": calls[name], "items": items[name]}
            else:
                counts.update({k: {"calls": calls[k], "items": items[k]} for k in sorted(calls)
                               if k.startswith(name + ".") and calls[k]})


def run_child(module: str, function: str, kwargs: dict) -> tuple[Any, float]:
    """``module.function(**kwargs)`` in a child Python process: (its JSON-able result, the child's
    peak resident memory in MB). The child's stderr is copied to this process's when it ends; a
    child that fails raises RuntimeError with the last line of its stderr (its error).

    The peak is the child's ``VmHWM`` (proc(5): the high-water mark of the resident set of its own
    address space) where Linux has it. Not ``ru_maxrss``: that one survives ``execve`` and, with
    the vfork that Python's subprocess uses, starts at this parent's resident size, so a child
    would never weigh less than its parent. Elsewhere ``ru_maxrss`` (``os.wait4``) it is.
    """
    with tempfile.TemporaryDirectory(prefix="petdiffusion-child-") as tmp:
        out = Path(tmp) / "result.json"
        code = ("import json, sys, importlib\n"
                f"fn = getattr(importlib.import_module({module!r}), {function!r})\n"
                "res = fn(**json.loads(sys.argv[1]))\n"
                "peak = None\n"
                "try:\n"
                "    for line in open('/proc/self/status'):\n"
                "        if line.startswith('VmHWM:'):\n"
                "            peak = int(line.split()[1]) / 1024.0\n"
                "except OSError:\n"
                "    pass\n"
                f"open({str(out)!r}, 'w').write(json.dumps({{'result': res, 'peak_mb': peak}}, "
                "default=str))\n")
        err_path = Path(tmp) / "stderr.txt"
        with err_path.open("w") as err:
            proc = subprocess.Popen([sys.executable, "-c", code, json.dumps(kwargs)],
                                    stdout=subprocess.DEVNULL, stderr=err)
            try:
                _, status, usage = os.wait4(proc.pid, 0)
            except BaseException:
                proc.kill()
                proc.wait()
                raise
        stderr = err_path.read_text(errors="replace")
        sys.stderr.write(stderr)  # the child's logging, after it
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            last = [ln for ln in stderr.splitlines() if ln.strip()][-1:] or ["no message"]
            raise RuntimeError(f"{module}.{function} failed in its child process "
                               f"(exit status {proc.returncode}): {last[0].strip()}")
        done = json.loads(out.read_text())
        peak = done["peak_mb"] if done["peak_mb"] is not None else usage.ru_maxrss / 1024.0
        return done["result"], peak


@dataclass
class TaskRuns:
    """What :func:`time_task_runs` measured: the model loaded once, then ``repeat`` timed runs."""
    model: Any
    load_seconds: float
    seconds: list[float]                 # one per run, model load excluded
    counts: dict[str, dict[str, int]]    # network evaluations of the last run (forward hooks)
    manifest: Path                       # manifest.json of the last run


def time_task_runs(task_id: str, inputs: dict[str, str], out_dir: Path, repeat: int = 1,
                   device: str | None = "auto", params: dict | None = None,
                   model_id: str | None = None) -> TaskRuns:
    """The task's bench protocol: load its shipped model (``model_id``: another shipped model, e.g.
    the one a task's default picks for these inputs) once, then run ``run_task`` end to end
    ``repeat`` times into ``out_dir/out<r>``, timing each run and counting network evaluations."""
    t0 = time.monotonic()
    model = load_task_model(task_id, model_id, device)
    load_s = time.monotonic() - t0
    seconds, counts, manifest = [], {}, None
    for r in range(max(1, int(repeat))):
        with count_forward_calls(model) as counts:
            t0 = time.monotonic()
            manifest = run_task(task_id, inputs, params or {}, Path(out_dir) / f"out{r}",
                                device=device, model=model)
            seconds.append(time.monotonic() - t0)
    return TaskRuns(model, load_s, seconds, counts, manifest)
