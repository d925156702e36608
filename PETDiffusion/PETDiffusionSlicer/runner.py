"""Run a PETDiffusionLib task in a separate process and bring its outputs back as MRML nodes.

The library runs as ``PythonSlicer -m PETDiffusionLib run <task> --<input> FILE ... --out DIR
--progress json`` inside Slicer (plain ``python`` outside), on temporary NRRD copies of the input
nodes. A reader thread turns each JSON line of its stdout into an event (progress, log, result,
error; protocol in PETDiffusionLib/progress.py) on a queue; :meth:`TaskRun.poll`, called from the
main thread (a QTimer in the panel, a loop in ``wait``), hands the events to the callbacks and, when
the process has ended, loads the outputs listed in ``manifest.json``. Nodes are only ever created
on the main thread and only after a successful run, so a cancelled or failed run adds nothing to
the scene. Cancel kills the whole process tree and removes every temporary file.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Mapping

import SimpleITK as sitk

from . import nodes
from .resources import library_root

log = logging.getLogger(__name__)

ProgressCallback = Callable[[float, str, str], None]   # (fraction, stage, message)
LogCallback = Callable[[str, str], None]                # (level, message)

TEMP_PREFIX = "PETDiffusion-run-"


class TaskError(RuntimeError):
    """The library reported an error: ``str(exc)`` is the library's own message."""


class TaskCancelled(RuntimeError):
    pass


def python_executable() -> str:
    """PythonSlicer inside Slicer (Slicer's Python with its environment), else this interpreter."""
    if hasattr(slicer_module(), "app"):
        exe = shutil.which("PythonSlicer")
        if exe:
            return exe
        candidate = Path(sys.executable).with_name("PythonSlicer" + (".exe" if os.name == "nt" else ""))
        if candidate.exists():
            return str(candidate)
    return sys.executable


def slicer_module():
    import slicer
    return slicer


def subprocess_environment(device: str | None) -> dict:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    root = library_root()
    if root is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(root)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = "-1"  # keep a CPU run off the GPU entirely
    return env


def _no_window() -> dict:
    """subprocess keywords that keep a console window from opening on Windows."""
    return {"creationflags": subprocess.CREATE_NO_WINDOW} if os.name == "nt" else {}


def library_command(*args: str) -> list[str]:
    return [python_executable(), "-m", "PETDiffusionLib", *args]


SPEC_CACHE_DIR = Path(tempfile.gettempdir()) / "PETDiffusion-spec-cache"


def spec_cache_key(root: Path | None = None) -> str:
    """Changes whenever a task spec can have changed: a hash of the library's version file and of the
    size and modification time of every ``tasks/**/*.py`` and ``__init__.py`` of the library."""
    root = root if root is not None else library_root()
    lib = (root / "PETDiffusionLib") if root is not None else None
    digest = hashlib.sha256(str(lib).encode())
    if lib is not None and lib.is_dir():
        files = sorted([lib / "__init__.py", *lib.joinpath("tasks").rglob("*.py")])
        for f in files:
            if f.is_file():
                st = f.stat()
                digest.update(f"{f.relative_to(lib)}:{st.st_size}:{st.st_mtime_ns};".encode())
    return digest.hexdigest()[:16]


def task_spec(task: str, timeout: float = 120.0, cache_dir: Path | None = SPEC_CACHE_DIR) -> dict:
    """The task's spec (inputs, parameters with defaults and ranges, outputs) from the library.

    ``petdiffusion spec`` runs once per library state (a new Python process takes seconds); its
    answer is kept in ``cache_dir`` under :func:`spec_cache_key`, so a later call, and the first Apply
    after a prefetch (:func:`prefetch_spec`), reads a file instead. ``cache_dir=None``: always ask.
    """
    cached = Path(cache_dir) / f"{task}-{spec_cache_key()}.json" if cache_dir is not None else None
    if cached is not None and cached.is_file():
        try:
            return json.loads(cached.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            log.warning("ignoring an unreadable spec cache file %s", cached)
    proc = subprocess.run(library_command("spec", task), capture_output=True, text=True,
                          env=subprocess_environment(None), timeout=timeout, **_no_window())
    if proc.returncode != 0:
        raise TaskError(last_error_line(proc.stderr) or f"petdiffusion spec {task} failed ({proc.returncode})")
    spec = json.loads(proc.stdout)[task]
    if cached is not None:
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(spec), encoding="utf-8")
            os.replace(tmp, cached)
        except OSError as exc:
            log.warning("could not cache the %s spec: %s", task, exc)
    return spec


def prefetch_spec(task: str, done: Callable[[dict | None, str | None], None] | None = None) -> threading.Thread:
    """Fetch (and cache) the task's spec in a background thread, so that no click waits for it.
    ``done(spec, error)`` is called from that thread (set a flag there; touch no Qt object)."""
    def work():
        try:
            spec, error = task_spec(task), None
        except Exception as exc:  # reported to the caller; the GUI shows it on Apply
            spec, error = None, str(exc)
        if done is not None:
            done(spec, error)
    thread = threading.Thread(target=work, name=f"PETDiffusion-spec-{task}", daemon=True)
    thread.start()
    return thread


def last_error_line(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ln.startswith("petdiffusion: error: "):
            return ln[len("petdiffusion: error: "):]
    return lines[-1] if lines else ""


def launch_process(cmd: list[str], env: dict) -> tuple[subprocess.Popen, bool]:
    """Start the library process; returns (process, merged).

    Through Slicer's console-process launcher (``slicer.util.launchConsoleProcess``: no console
    window on Windows, Slicer's environment plus ``env``) where there is one, with stdout and stderr
    merged (``merged`` True); else ``subprocess.Popen`` in a process group of its own, stderr apart.
    """
    util = getattr(slicer_module(), "util", None)
    launcher = getattr(util, "launchConsoleProcess", None)
    if launcher is not None:
        try:
            return launcher(cmd, useStartupEnvironment=False, updateEnvironment=env), True
        except TypeError:   # a Slicer older than updateEnvironment (5.2): start it ourselves
            log.info("slicer.util.launchConsoleProcess takes no updateEnvironment; using subprocess")
    popen_kw = {}
    if os.name == "nt":
        popen_kw["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)
    else:
        popen_kw["start_new_session"] = True  # its own process group: cancel kills all of it
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            text=True, bufsize=1, env=env, **popen_kw), False


def run_library(args: list[str], timeout: float = 600.0, device: str | None = None) -> tuple[int, str]:
    """Run one library command to its end (through :func:`launch_process`); (return code, its
    output: stdout, then stderr unless merged). Raises TaskError when it outlives ``timeout``."""
    proc, merged = launch_process(library_command(*args), subprocess_environment(device))
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_process_tree(proc.pid, own_group=not merged)
        proc.communicate()
        raise TaskError(f"petdiffusion {args[0]} did not finish within {timeout:.0f} s and was stopped") from None
    return proc.returncode, (out or "") + ("" if merged else (err or ""))


def kill_process_tree(pid: int, timeout: float = 2.0, own_group: bool = True) -> None:
    """Kill a process and all its descendants (psutil where present, else its process group when it
    has one of its own, else the process alone)."""
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        try:
            parent = psutil.Process(pid)
        except psutil.NoSuchProcess:
            return
        procs = parent.children(recursive=True) + [parent]
        for p in procs:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(procs, timeout=timeout)
        return
    if os.name == "nt":
        subprocess.run(["taskkill", "/F", "/T", "/PID", str(pid)], capture_output=True)
        return
    try:
        if own_group:
            os.killpg(os.getpgid(pid), signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)   # never the group: it would be Slicer's own
    except ProcessLookupError:
        pass


class TaskRun:
    """One run of one task. States: created -> running -> completed | failed | cancelled."""

    def __init__(self, task: str, inputs: Mapping[str, object], parameters: Mapping[str, object] | None = None,
                 *, spec: dict | None = None, model: str | None = None, device: str | None = None,
                 reference: str | None = None, on_progress: ProgressCallback | None = None,
                 on_log: LogCallback | None = None, temp_root: str | None = None,
                 results_dir: str | None = None,
                 input_source: Callable[[str, object, Path], Path | None] | None = None):
        self.task = task
        self.inputs = {k: v for k, v in inputs.items() if v is not None}
        self.parameters = {k: v for k, v in (parameters or {}).items() if v is not None}
        self.spec = spec
        self.model = model
        self.device = device
        self.reference_role = reference or next(iter(self.inputs), None)
        self.on_progress = on_progress
        self.on_log = on_log
        self.temp_root = temp_root
        self.results_dir = Path(results_dir) if results_dir else None
        self.state = "created"
        self.error: str | None = None
        self.fraction = 0.0
        self.stage = ""
        self.fractions: list[float] = []
        self.manifest: dict | None = None
        self.output_dir: Path | None = None     # kept after success (for Export)
        self.output_nodes: dict[str, object] = {}
        self.output_files: dict[str, Path] = {}
        self.work_dir: Path | None = None
        self.process: subprocess.Popen | None = None
        self._events: queue.Queue = queue.Queue()
        self._stderr_tail: list[str] = []
        self._threads: list[threading.Thread] = []
        self._manifest_path: str | None = None
        self._error_event: str | None = None
        self._input_labels: dict[str, str] = {}   # temporary file -> what the user calls it
        self._merged = False                      # stderr merged into stdout (console launcher)
        # (role, node, work_dir) -> a file or folder the library reads instead of the node's voxels
        # (the DICOM series of a PET in Bq/mL: the library converts it with its SUV rules), or None
        self.input_source = input_source
        self.input_sources: dict[str, Path] = {}

    # -- command line -----------------------------------------------------------------------
    def command(self, input_files: Mapping[str, Path], out_dir: Path) -> list[str]:
        args = ["run", self.task]
        for role, path in input_files.items():
            args += [f"--{role}", str(path)]
        for name, value in self.parameters.items():
            flag = "--" + name.replace("_", "-")
            if isinstance(value, bool):
                args.append(flag if value else "--no-" + name.replace("_", "-"))
            else:
                args += [flag, str(value)]
        args += ["--out", str(out_dir), "--progress", "json"]
        if self.device:
            args += ["--device", self.device]
        if self.model:
            args += ["--model", str(self.model)]
        return library_command(*args)

    # -- life cycle -------------------------------------------------------------------------
    def start(self) -> "TaskRun":
        if self.state != "created":
            raise RuntimeError("a TaskRun starts once")
        self.work_dir = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=self.temp_root))
        try:
            input_files = {}
            reference = self.inputs.get(self.reference_role)
            for role, node in self.inputs.items():
                path = self.work_dir / f"{role}.nrrd"
                if isinstance(node, (str, os.PathLike)):
                    input_files[role] = Path(node)
                    continue
                source = self.input_source(role, node, self.work_dir) if self.input_source else None
                if source is not None:
                    input_files[role] = self.input_sources[role] = Path(source)
                    self._input_labels[str(Path(source))] = f'"{node.GetName()}" (--{role}, its DICOM series)'
                    continue
                if node.IsA("vtkMRMLSegmentationNode"):
                    path = self._write_label_input(role, *nodes.label_image_from_segmentation(node, reference))
                elif node.IsA("vtkMRMLLabelMapVolumeNode"):
                    path = self._write_label_input(role, nodes.image_from_volume_node(node), nodes.label_names_of(node))
                else:
                    nodes.write_volume_node(node, path)
                input_files[role] = path
                label = f'"{node.GetName()}" (--{role})'
                self._input_labels[str(path.resolve())] = label
                self._input_labels[str(path)] = label
            out_dir = self.work_dir / "out"
            cmd = self.command(input_files, out_dir)
            log.info("starting %s", " ".join(cmd))
            self.process, self._merged = launch_process(cmd, subprocess_environment(self.device))
        except BaseException:
            self._remove_work_dir()
            raise
        self.state = "running"
        streams = [(self._read_stdout, self.process.stdout)]
        if not self._merged:
            streams.append((self._read_stderr, self.process.stderr))
        for target, stream in streams:
            t = threading.Thread(target=target, args=(stream,), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def _write_label_input(self, role: str, image: sitk.Image, names: dict[int, str]) -> Path:
        """A label input as a label map file with its label names beside it in case.json
        ({"organ_labels": {value: name}}, the simulator's convention the tasks read)."""
        folder = self.work_dir / role
        folder.mkdir()
        path = folder / f"{role}.nrrd"
        sitk.WriteImage(sitk.Cast(image, sitk.sitkUInt16), str(path), useCompression=True)
        if names:
            (folder / "case.json").write_text(json.dumps({"organ_labels": {str(k): v for k, v in names.items()}}))
        return path

    def _read_stdout(self, stream) -> None:
        for line in stream:
            line = line.strip()
            if not line:
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                event = None
            if not isinstance(event, dict):
                event = {"event": "log", "level": "info", "message": line}
                if self._merged:   # stderr comes this way too: keep the tail for error messages
                    self._stderr_tail.append(line)
                    del self._stderr_tail[:-200]
            self._events.put(event)

    def _read_stderr(self, stream) -> None:
        for line in stream:
            self._stderr_tail.append(line.rstrip("\n"))
            del self._stderr_tail[:-200]

    def poll(self) -> bool:
        """Deliver queued events; finish the run when the process has ended. True when finished."""
        if self.state != "running":
            return True
        self._drain()
        if self.process.poll() is None:
            return False
        for t in self._threads:
            t.join(timeout=5)
        self._drain()
        self._finish(self.process.returncode)
        return True

    def _drain(self) -> None:
        while True:
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                return
            kind = event.get("event")
            if kind == "progress":
                self.fraction = float(event.get("fraction", 0.0))
                self.stage = str(event.get("stage", ""))
                self.fractions.append(self.fraction)
                if self.on_progress:
                    self.on_progress(self.fraction, self.stage, str(event.get("message", "")))
            elif kind == "log":
                if self.on_log:
                    self.on_log(str(event.get("level", "info")), str(event.get("message", "")))
            elif kind == "result":
                self._manifest_path = event.get("manifest")
            elif kind == "error":
                self._error_event = str(event.get("message", ""))

    def _finish(self, returncode: int) -> None:
        try:
            if returncode != 0 or self._error_event is not None:
                self.error = (self._error_event or last_error_line("\n".join(self._stderr_tail))
                              or f"the {self.task} process ended with status {returncode}")
                # the library names the file it read; the user knows it by the node's name
                for path, label in self._input_labels.items():
                    self.error = self.error.replace(path, label)
                self.state = "failed"
                return
            manifest_path = Path(self._manifest_path) if self._manifest_path else self.work_dir / "out" / "manifest.json"
            self.output_dir = self._keep_outputs(manifest_path.parent)
            self.manifest = json.loads((self.output_dir / "manifest.json").read_text())
            self.output_nodes = load_outputs(self.manifest, self.output_dir, self.spec,
                                             reference=self.inputs.get(self.reference_role), task=self.task)
            self.output_files = {k: self.output_dir / v["file"] for k, v in self.manifest.get("outputs", {}).items()}
            self.state = "completed"
        except Exception as exc:  # loading failed: report it, leave no half-loaded nodes behind
            for node in self.output_nodes.values():
                if node is not None and node.GetScene() is not None:
                    node.GetScene().RemoveNode(node)
            self.output_nodes = {}
            self.error = f"could not load the results of {self.task}: {exc}"
            self.state = "failed"
        finally:
            self._remove_work_dir()

    def _keep_outputs(self, out_dir: Path) -> Path:
        """Move the output folder out of the temporary folder (Export reads it later)."""
        if self.results_dir is None:
            base = Path(tempfile.gettempdir()) / "PETDiffusion-results"
            base.mkdir(parents=True, exist_ok=True)
            dest = Path(tempfile.mkdtemp(prefix=f"{self.task}-{time.strftime('%Y%m%d-%H%M%S')}-", dir=base))
        else:
            dest = self.results_dir
            dest.mkdir(parents=True, exist_ok=True)
        for item in out_dir.iterdir():
            target = dest / item.name
            if target.exists():
                shutil.rmtree(target) if target.is_dir() else target.unlink()
            shutil.move(str(item), str(target))
        return dest

    def cancel(self) -> None:
        """Kill the process tree, drop pending events, remove temporary files. No nodes are made."""
        if self.state != "running":
            return
        if self.process and self.process.poll() is None:
            kill_process_tree(self.process.pid, own_group=not self._merged)
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        for t in self._threads:
            t.join(timeout=2)
        self._events = queue.Queue()
        self.state = "cancelled"
        self._remove_work_dir()

    def wait(self, timeout: float | None = None, interval: float = 0.05) -> "TaskRun":
        """Block until finished; raises TaskError with the library's message on failure."""
        t0 = time.monotonic()
        while not self.poll():
            if timeout is not None and time.monotonic() - t0 > timeout:
                self.cancel()
                raise TaskError(f"{self.task} did not finish within {timeout:.0f} s and was stopped")
            time.sleep(interval)
        if self.state == "failed":
            raise TaskError(self.error)
        if self.state == "cancelled":
            raise TaskCancelled(f"{self.task} was cancelled")
        return self

    def _remove_work_dir(self) -> None:
        if self.work_dir is not None:
            shutil.rmtree(self.work_dir, ignore_errors=True)
            # the library stages beside --out inside work_dir; one retry covers late writes
            if self.work_dir.exists():
                time.sleep(0.1)
                shutil.rmtree(self.work_dir, ignore_errors=True)


# ------------------------------------------------------------------------------------------------
# Outputs -> nodes
# ------------------------------------------------------------------------------------------------
def _label_names(manifest: dict, output_name: str, spec: dict | None) -> dict[int, str]:
    keys = []
    if spec:
        for o in spec.get("outputs", []):
            if o.get("name") == output_name and o.get("label_names"):
                keys.append(o["label_names"])
    singular = output_name[:-1] if output_name.endswith("s") else output_name
    keys += [f"{output_name}_labels", f"{singular}_labels", f"{output_name}_names", "label_names"]
    for key in keys:
        value = manifest.get(key)
        if isinstance(value, dict) and output_name in value and isinstance(value[output_name], (dict, list)):
            value = value[output_name]
        if isinstance(value, list):
            return {i: str(n) for i, n in enumerate(value) if i > 0 or str(n).lower() not in ("background", "")}
        if isinstance(value, dict) and value:
            first_key, first_val = next(iter(value.items()))
            if str(first_key).lstrip("-").isdigit():
                return {int(k): str(v) for k, v in value.items() if int(k) != 0}
            if isinstance(first_val, int) or str(first_val).isdigit():
                return {int(v): str(k) for k, v in value.items() if int(v) != 0}
    return {}


def output_display_name(task: str, name: str) -> str:
    return f"{task} {name.replace('_', ' ')}"


def load_outputs(manifest: dict, out_dir: Path, spec: dict | None = None, reference=None,
                 task: str | None = None) -> dict[str, object]:
    """Volume, label map and table outputs listed in the manifest, as nodes (report/json stay files)."""
    task = task or manifest.get("task", "PETDiffusion")
    created: dict[str, object] = {}
    try:
        for name, info in manifest.get("outputs", {}).items():
            path = Path(out_dir) / info["file"]
            kind = info.get("kind")
            synthetic = bool(info.get("synthetic"))
            title = output_display_name(task, name)
            if kind == "volume":
                image = sitk.ReadImage(str(path))
                node = nodes.volume_node_from_image(image, title, units=info.get("units"), synthetic=synthetic)
            elif kind == "labelmap":
                image = sitk.ReadImage(str(path))
                names = _label_names(manifest, name, spec)
                lesion = "lesion" in name.lower()
                if lesion and not names:
                    names = {1: "lesion"}
                node = nodes.segmentation_from_label_image(image, names, title, reference_volume=reference,
                                                           lesion=lesion, synthetic=synthetic)
            elif kind == "table" and path.suffix.lower() == ".csv":
                node = nodes.table_node_from_csv(path, title)
            else:
                continue
            node.SetAttribute(nodes.TASK_ATTRIBUTE, task)
            if reference is not None and kind != "labelmap":
                nodes.place_in_study_of(node, reference)
            created[name] = node
    except Exception:
        for node in created.values():
            nodes.scene().RemoveNode(node)
        raise
    return created
