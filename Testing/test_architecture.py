"""The house rules of docs/ARCHITECTURE.md, checked on the source tree.

- imports point down only: no import cycles among the library's modules (counting imports inside
  functions too: a hidden import is still a dependency); ``tasks`` never imports ``training``;
  the library never imports slicer, qt, ctk or vtk;
- ``petdiffusion spec`` and ``petdiffusion --help`` answer without importing torch;
- no library file over 600 lines;
- every registered task has every part (package files and their functions, training recipe,
  Slicer module, .ui and icon), so adding a task cannot half-succeed.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from PETDiffusionLib.tasks.registry import PARTS, TASKS, task_spec

ROOT = Path(__file__).resolve().parents[1]
LIB = ROOT / "PETDiffusionLib"
MAX_LINES = 600  # issue 12: "no library file over 600 lines"


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def library_modules() -> dict[str, Path]:
    return {module_name(p): p for p in LIB.rglob("*.py")}


def imports_of(path: Path, modules: dict[str, Path]) -> list[tuple[str, int, bool]]:
    """(imported library module, line, inside a function?) for every import statement in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found = []

    def visit(node, in_function: bool):
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name.split(".")[0] == "PETDiffusionLib":
                        found.append((alias.name, child.lineno, in_function))
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")
                    anchor = anchor[:len(anchor) - (child.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                if base.split(".")[0] != "PETDiffusionLib":
                    continue
                for alias in child.names:
                    sub = f"{base}.{alias.name}"
                    found.append((sub if sub in modules else base, child.lineno, in_function))
            visit(child, inner)
    visit(tree, False)
    return [(m, line, f) for m, line, f in found if m in modules and m != me]


def import_graph() -> dict[str, set[str]]:
    modules = library_modules()
    return {name: {m for m, _, _ in imports_of(path, modules)} for name, path in modules.items()}


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm (iterative); components of more than one module are cycles."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []
    counter = [0]
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]; counter[0] += 1
        stack.append(root); on_stack.add(root)
        while work:
            node, it = work[-1]
            nxt = next(it, None)
            if nxt is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        w = stack.pop(); on_stack.discard(w); comp.append(w)
                        if w == node:
                            break
                    out.append(sorted(comp))
            elif nxt not in index:
                index[nxt] = low[nxt] = counter[0]; counter[0] += 1
                stack.append(nxt); on_stack.add(nxt)
                work.append((nxt, iter(sorted(graph.get(nxt, ())))))
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
    return [c for c in out if len(c) > 1]


def test_the_cycle_finder_finds_a_cycle():
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert strongly_connected({"a": {"b"}, "b": set()}) == []


def test_the_library_has_no_import_cycles():
    cycles = strongly_connected(import_graph())
    assert not cycles, f"import cycles: {cycles}"


def test_tasks_never_import_training():
    modules = library_modules()
    bad = [f"{name} line {line} imports {m}" for name, path in modules.items()
           if name.startswith("PETDiffusionLib.tasks")
           for m, line, _ in imports_of(path, modules) if m.startswith("PETDiffusionLib.training")]
    assert not bad, bad


def test_the_library_never_imports_slicer_qt_ctk_or_vtk():
    bad = []
    for path in LIB.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            bad += [f"{path.relative_to(ROOT)}: {n}" for n in names
                    if n.split(".")[0] in ("slicer", "qt", "ctk", "vtk")]
    assert not bad, bad


def test_no_library_file_is_over_600_lines():
    long = {str(p.relative_to(ROOT)): n for p in LIB.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, long


@pytest.mark.parametrize("argv", [["spec"], ["--help"], ["run", "--help"], ["spec", "ct-to-pet"]])
def test_spec_and_help_answer_without_importing_torch(argv):
    code = ("import sys\nfrom PETDiffusionLib.cli.main import main\n"
            "try:\n    main(%r)\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'monai') if m in sys.modules]\n"
            "print('HEAVY', heavy)\n" % (argv,))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)
    assert done.returncode == 0, done.stderr
    heavy = done.stdout.strip().splitlines()[-1]
    assert "torch" not in heavy and "monai" not in heavy, heavy


def test_spec_json_lists_every_registered_task_with_its_slicer_module():
    import json
    done = subprocess.run([sys.executable, "-m", "PETDiffusionLib", "spec"], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    specs = json.loads(done.stdout)
    assert list(specs) == [t.id for t in TASKS]
    for t in TASKS:
        assert specs[t.id]["slicer_module"], t.id


# ------------------------------------------------------------------------------ task shape
REQUIRED_FUNCTIONS = {
    "spec": ("SPEC",),
    "pipeline": ("check_inputs", "load_model", "predict", "report"),
    "evaluate": ("add_evaluate_args", "evaluate"),
    "demo": ("TITLE", "demo"),
    "bench": ("TITLE", "bench"),
}


def top_level_names(path: Path) -> set[str]:
    names = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.ImportFrom):
            names |= {a.asname or a.name for a in node.names}
    return names


def task_shape_problems(package: str, slicer_module: str | None, root: Path = ROOT) -> list[str]:
    """What a registered task lacks; [] when it has every part."""
    problems = []
    folder = root / "PETDiffusionLib" / "tasks" / package
    for part in PARTS:
        path = folder / f"{part}.py"
        if not path.is_file():
            problems.append(f"missing {path.relative_to(root)}")
            continue
        missing = set(REQUIRED_FUNCTIONS[part]) - top_level_names(path)
        if missing:
            problems.append(f"{path.relative_to(root)} lacks {', '.join(sorted(missing))}")
    recipe = root / "PETDiffusionLib" / "training" / "recipes"
    recipe_file = recipe / f"{package}.py" if (recipe / f"{package}.py").is_file() \
        else recipe / package / "__init__.py"
    if not recipe_file.is_file():
        problems.append(f"missing training recipe training/recipes/{package}")
    elif "train" not in top_level_names(recipe_file):
        problems.append(f"{recipe_file.relative_to(root)} lacks train")
    if not slicer_module:
        problems.append(f"task {package}: spec names no Slicer module")
    else:
        for rel in (f"PETDiffusion/{slicer_module}.py", f"Resources/UI/{slicer_module}.ui",
                    f"Resources/Icons/{slicer_module}.png"):
            if not (root / rel).is_file():
                problems.append(f"missing {rel}")
    return problems


@pytest.mark.parametrize("entry", TASKS, ids=[t.id for t in TASKS])
def test_every_registered_task_has_every_part(entry):
    assert task_shape_problems(entry.package, task_spec(entry.id).slicer_module) == []


def test_a_task_missing_a_part_is_reported(tmp_path):
    # a copy of the denoise-segment layout without its bench.py and its icon
    entry = TASKS[0]
    for rel in [f"PETDiffusionLib/tasks/{entry.package}/{p}.py" for p in PARTS if p != "bench"] + \
            [f"PETDiffusionLib/training/recipes/{entry.package}.py"]:
        src = ROOT / rel
        if not src.is_file():
            src = ROOT / rel.replace(".py", "/__init__.py")
            rel = rel.replace(".py", "/__init__.py")
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(src.read_text())
    module = task_spec(entry.id).slicer_module
    for rel in (f"PETDiffusion/{module}.py", f"Resources/UI/{module}.ui"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    problems = task_shape_problems(entry.package, module, tmp_path)
    assert problems == [f"missing PETDiffusionLib/tasks/{entry.package}/bench.py",
                        f"missing Resources/Icons/{module}.png"]


def test_library_imports_sit_at_module_level_outside_the_cli():
    """An import inside a function hides a dependency. Only the CLI's command modules import their
    heavy modules (torch, Ray) when the command runs, so that `petdiffusion --help` stays fast."""
    modules = library_modules()
    hidden = [f"{name} line {line} imports {m}" for name, path in modules.items()
              if not name.startswith("PETDiffusionLib.cli")
              for m, line, in_function in imports_of(path, modules) if in_function]
    assert not hidden, hidden
