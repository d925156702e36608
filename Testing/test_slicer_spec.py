"""The panels offer exactly the task's parameters, with the spec's ranges, defaults and choices
(`petdiffusion spec`), so the parameter node, the .ui and the library agree."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
from PETDiffusionLib.tasks.registry import task_ids, task_spec

# module -> task, from the registry (every registered task's panel)
PANELS = {task_spec(t).slicer_module: t for t in task_ids() if task_spec(t).slicer_module}
INT_MAX = 2147483647   # QSpinBox's largest value: stands for "no maximum" in the spec


@pytest.fixture(scope="module")
def specs():
    out = subprocess.run([sys.executable, "-m", "PETDiffusionLib", "spec"], capture_output=True, text=True,
                         cwd=ROOT, check=True).stdout
    return json.loads(out)


def module_ast(name):
    return ast.parse((ROOT / "PETDiffusion" / f"{name}.py").read_text())


def parameter_node_annotations(name) -> dict[str, dict]:
    """field -> {"type", "range", "choices", "default"} from the @parameterNodeWrapper class."""
    for node in ast.walk(module_ast(name)):
        if isinstance(node, ast.ClassDef) and node.name == f"{name}ParameterNode":
            fields = {}
            for st in node.body:
                if not isinstance(st, ast.AnnAssign):
                    continue
                info = {"default": ast.literal_eval(st.value) if st.value is not None and not isinstance(st.value, ast.Call) else None}
                ann = st.annotation
                if isinstance(ann, ast.Subscript) and getattr(ann.value, "id", "") == "Annotated":
                    base, *extras = ann.slice.elts
                    info["type"] = base.id
                    for e in extras:
                        if e.func.id == "WithinRange":
                            info["range"] = tuple(ast.literal_eval(a) for a in e.args)
                        if e.func.id == "Choice":
                            info["choices"] = ast.literal_eval(e.args[0])
                fields[st.target.id] = info
            return fields
    raise AssertionError(f"{name}ParameterNode not found")


def logic_parameter_fields(name) -> dict[str, str]:
    for node in ast.walk(module_ast(name)):
        if isinstance(node, ast.ClassDef) and node.name == f"{name}Logic":
            for st in node.body:
                if isinstance(st, ast.AnnAssign) and st.target.id == "parameter_fields" or \
                        isinstance(st, ast.Assign) and st.targets[0].id == "parameter_fields":
                    return ast.literal_eval(st.value)
    raise AssertionError(f"{name}Logic.parameter_fields not found")


def logic_input_roles(name) -> set[str]:
    for node in ast.walk(module_ast(name)):
        if isinstance(node, ast.FunctionDef) and node.name == "processParameterNode":
            for call in ast.walk(node):
                if isinstance(call, ast.Call) and getattr(call.func, "attr", "") == "process":
                    return {ast.literal_eval(k) for k in call.args[0].keys}
    raise AssertionError("processParameterNode not found")


def ui_spinbox(name, param):
    for w in ET.parse(ROOT / "Resources" / "UI" / f"{name}.ui").iter("widget"):
        props = {p.get("name"): p for p in w.findall("property")}
        if "SlicerParameterName" in props and props["SlicerParameterName"].find("string").text == param:
            def value(key):
                p = props.get(key)
                return None if p is None else float(list(p)[0].text)
            return value("minimum"), value("maximum"), value("value")
    raise AssertionError(f"no widget for {param} in {name}.ui")


@pytest.mark.parametrize("panel", PANELS)
def test_panel_offers_every_task_parameter(panel, specs):
    spec = specs[PANELS[panel]]
    mapping = logic_parameter_fields(panel)
    assert set(mapping) == {p["name"] for p in spec["parameters"]}
    fields = parameter_node_annotations(panel)
    assert set(mapping.values()) <= set(fields)


@pytest.mark.parametrize("panel", PANELS)
def test_ranges_defaults_and_choices_match_the_spec(panel, specs):
    spec = {p["name"]: p for p in specs[PANELS[panel]]["parameters"]}
    fields = parameter_node_annotations(panel)
    for name, field in logic_parameter_fields(panel).items():
        p, f = spec[name], fields[field]
        if p["choices"]:
            assert f["choices"] == p["choices"], name
        elif p["type"] == "bool":
            assert f["type"] == "bool" if "type" in f else True, name
        elif p["type"] == "str":     # free text (dual-timepoint-ac's scatter fraction: auto or a number)
            assert "range" not in f, name
        else:
            lo, hi = f["range"]
            assert lo == p["minimum"], name
            assert hi == (p["maximum"] if p["maximum"] is not None else INT_MAX), name
            ui_lo, ui_hi, ui_value = ui_spinbox(panel, field)
            assert (ui_lo, ui_hi) == (lo, hi), name
            assert ui_value == f["default"], name
        if p["default"] is not None:
            assert f["default"] == p["default"], name
        else:  # kVp: the spec's default is "the DICOM tag, else 120"; the panel shows the 120
            assert name == "kvp" and f["default"] == 120.0


@pytest.mark.parametrize("panel", PANELS)
def test_panel_inputs_are_task_inputs_and_cover_the_required_ones(panel, specs):
    inputs = {i["name"]: i for i in specs[PANELS[panel]]["inputs"]}
    roles = logic_input_roles(panel)
    assert roles <= set(inputs)
    assert {n for n, i in inputs.items() if i["required"]} <= roles
