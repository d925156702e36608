"""Static checks of the Slicer modules: the modules are the task registry's (every registered task's
``slicer_module`` has its .py, .ui, icon and CMake entry), they compile, their Widget code and parameter
nodes match their .ui files, the CMake lists match the files on disk, and the extension is catalogue
ready (LICENSE, ExtensionsIndex entry, requirements, help and acknowledgements). (The modules import
qt/ctk and the Slicer application, so they cannot be imported outside desktop Slicer; they are parsed
instead.)"""
from __future__ import annotations

import ast
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from PETDiffusionLib.tasks.registry import task_ids, task_spec

ROOT = Path(__file__).resolve().parents[1]


def registry_modules() -> dict[str, str | None]:
    """task id -> the Slicer module its spec names (PETDiffusionLib.tasks.registry)."""
    return {tid: task_spec(tid).slicer_module for tid in task_ids()}


MODULES = sorted({m for m in registry_modules().values() if m})


def module_source(name: str) -> str:
    return (ROOT / "PETDiffusion" / f"{name}.py").read_text(encoding="utf-8")


def ui_tree(name: str) -> ET.ElementTree:
    return ET.parse(ROOT / "Resources" / "UI" / f"{name}.ui")


def ui_widget_names(name: str) -> set[str]:
    return {w.get("name") for w in ui_tree(name).iter("widget")}


def ui_parameter_bindings(name: str) -> dict[str, str]:
    """SlicerParameterName -> widget object name."""
    out = {}
    for w in ui_tree(name).iter("widget"):
        for prop in w.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                out[prop.find("string").text] = w.get("name")
    return out


def parameter_node_fields(source: str) -> list[str]:
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef) and any(
                (isinstance(d, ast.Name) and d.id == "parameterNodeWrapper") for d in node.decorator_list):
            return [st.target.id for st in node.body if isinstance(st, ast.AnnAssign)]
    raise AssertionError("no @parameterNodeWrapper class found")


def cmake_list(variable: str) -> list[str]:
    text = (ROOT / "PETDiffusion" / "CMakeLists.txt").read_text()
    m = re.search(rf"set\({variable}\s+(.*?)\)", text, re.S)
    assert m, f"{variable} not set in PETDiffusion/CMakeLists.txt"
    return m.group(1).split()


@pytest.mark.parametrize("name", MODULES)
def test_module_file_compiles(name):
    compile(module_source(name), f"{name}.py", "exec")


@pytest.mark.parametrize("name", MODULES)
def test_module_has_the_four_classes(name):
    classes = {n.name for n in ast.walk(ast.parse(module_source(name))) if isinstance(n, ast.ClassDef)}
    assert {name, f"{name}Widget", f"{name}Logic", f"{name}Test", f"{name}ParameterNode"} <= classes


@pytest.mark.parametrize("name", MODULES)
def test_every_widget_the_code_references_exists_in_the_ui(name):
    """Both the module's Widget and the shared TaskWidget base (PETDiffusionSlicer/widget.py, with
    the module's result_buttons) may only name widgets that the module's .ui file has."""
    source = module_source(name)
    shared = (ROOT / "PETDiffusion" / "PETDiffusionSlicer" / "widget.py").read_text(encoding="utf-8")
    assert re.search(rf"class {name}Widget\(TaskWidget\)", source), "the Widget derives from TaskWidget"
    referenced = set(re.findall(r"self\.ui\.(\w+)", source + shared))
    m = re.search(r"result_buttons = \(([^)]*)\)", source) or re.search(r"result_buttons = \(([^)]*)\)", shared)
    referenced |= set(re.findall(r'"(\w+)"', m.group(1)))
    assert {"applyButton", "statusLabel", "progressBar", "exportButton"} <= referenced
    missing = referenced - ui_widget_names(name)
    assert not missing, f"{name}.py / widget.py reference widgets not in {name}.ui: {sorted(missing)}"
    ui_file = re.search(r'ui_file = "([^"]+)"', source).group(1)
    assert (ROOT / "Resources" / ui_file).is_file() and ui_file == f"UI/{name}.ui"


@pytest.mark.parametrize("name", MODULES)
def test_every_parameter_node_field_has_a_bound_widget_and_back(name):
    fields = parameter_node_fields(module_source(name))
    bindings = ui_parameter_bindings(name)
    assert sorted(fields) == sorted(bindings), (
        f"parameter node fields {sorted(fields)} vs SlicerParameterName in {name}.ui {sorted(bindings)}")


@pytest.mark.parametrize("name", MODULES)
def test_ui_file_is_a_qmrml_widget_with_apply_progress_status_export(name):
    root = ui_tree(name).getroot()
    top = root.find("widget")
    assert top.get("class") == "qMRMLWidget" and top.get("name") == name
    assert {"applyButton", "progressBar", "statusLabel", "exportButton"} <= ui_widget_names(name)


def test_every_resource_listed_in_cmake_exists_and_every_resource_is_listed():
    listed = set(cmake_list("PETDIFFUSION_RESOURCES"))
    on_disk = {str(p.relative_to(ROOT / "Resources")) for p in (ROOT / "Resources").rglob("*") if p.is_file()}
    assert listed == on_disk, f"listed only: {sorted(listed - on_disk)}; on disk only: {sorted(on_disk - listed)}"


def test_every_helper_script_listed_in_cmake_exists_and_every_script_is_listed():
    listed = set(cmake_list("PETDIFFUSION_HELPER_SCRIPTS"))
    on_disk = {str(p.relative_to(ROOT / "PETDiffusion")) for p in (ROOT / "PETDiffusion" / "PETDiffusionSlicer").glob("*.py")}
    assert listed == on_disk, f"listed only: {sorted(listed - on_disk)}; on disk only: {sorted(on_disk - listed)}"


def test_helper_package_is_built_once_not_per_module():
    """The helper scripts are compiled and installed once (ctkMacroCompilePythonScript), and every
    module's scripts are its own .py only: no module-name special case in CMake."""
    text = (ROOT / "PETDiffusion" / "CMakeLists.txt").read_text()
    assert "STREQUAL" not in text
    assert re.search(r'ctkMacroCompilePythonScript\(\s*TARGET_NAME PETDiffusionSlicer\s+SCRIPTS "\$\{PETDIFFUSION_HELPER_SCRIPTS\}"', text)
    assert re.search(r"foreach\(MODULE_NAME \$\{PETDIFFUSION_MODULES\}\)", text)
    assert re.search(r"SCRIPTS \$\{MODULE_NAME\}\.py\s", text)


def test_every_registered_task_has_a_slicer_module_and_cmake_lists_exactly_those():
    """A task added to the registry without its panel (or a panel left behind) fails here."""
    modules = registry_modules()
    assert set(modules) == set(task_ids()) and len(modules) >= 2
    missing = [tid for tid, m in modules.items() if not m]
    assert not missing, f"registered tasks whose spec names no slicer_module: {missing}"
    listed = cmake_list("PETDIFFUSION_MODULES")
    assert sorted(listed) == sorted(modules.values()) and len(set(listed)) == len(listed)
    assert {p.stem for p in (ROOT / "PETDiffusion").glob("*.py")} == set(MODULES)


@pytest.mark.parametrize("task_id", task_ids())
def test_registered_task_module_has_its_py_ui_icon_and_names_its_task(task_id):
    name = task_spec(task_id).slicer_module
    assert name, f"{task_id}: no slicer_module in its spec"
    for path in (ROOT / "PETDiffusion" / f"{name}.py", ROOT / "Resources" / "UI" / f"{name}.ui",
                 ROOT / "Resources" / "Icons" / f"{name}.png"):
        assert path.is_file(), f"{task_id}: {path.relative_to(ROOT)} is missing"
    assert f'TASK_ID = "{task_id}"' in module_source(name)
    assert f"Icons/{name}.png" in cmake_list("PETDIFFUSION_RESOURCES")
    assert f"UI/{name}.ui" in cmake_list("PETDIFFUSION_RESOURCES")


@pytest.mark.parametrize("name", MODULES)
def test_module_icon_is_a_png(name):
    data = (ROOT / "Resources" / "Icons" / f"{name}.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"


def test_extension_metadata_is_complete():
    text = (ROOT / "CMakeLists.txt").read_text()
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS"):
        assert re.search(rf'set\({key} "[^"]+"\)', text), key
    assert "add_subdirectory(PETDiffusion)" in text


def test_terminology_file_is_valid_json_with_snomed_codes():
    data = json.loads((ROOT / "Resources" / "Terminology" / "PETDiffusion.term.json").read_text())
    categories = data["SegmentationCodes"]["Category"]
    types = {t["3dSlicerLabel"]: t for c in categories for t in c["Type"]}
    # SNOMED CT concept ids (DICOM PS3.16 CID 7150/7151 use the same codes)
    assert types["lesion"]["CodeValue"] == "52988006"
    assert types["liver"]["CodeValue"] == "10200004"
    assert types["lungs"]["CodeValue"] == "39607008"
    for t in types.values():
        assert t["CodingSchemeDesignator"] == "SCT" and len(t["recommendedDisplayRGBValue"]) == 3


@pytest.mark.parametrize("name", MODULES)
def test_module_annotations_are_evaluated_for_the_parameter_node_wrapper(name):
    """parameterNodeWrapper reads the class annotations as types: no postponed (string) annotations."""
    tree = ast.parse(module_source(name))
    futures = [a.name for n in tree.body if isinstance(n, ast.ImportFrom) and n.module == "__future__" for a in n.names]
    assert "annotations" not in futures


def _field_kinds(source: str) -> dict[str, tuple[str, bool]]:
    """field -> (base type name, has a Choice annotation) of the @parameterNodeWrapper class."""
    out = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef) and any(getattr(d, "id", "") == "parameterNodeWrapper" for d in node.decorator_list):
            for st in node.body:
                if not isinstance(st, ast.AnnAssign):
                    continue
                ann, choice = st.annotation, False
                if isinstance(ann, ast.Subscript) and getattr(ann.value, "id", "") == "Annotated":
                    base, *extras = ann.slice.elts
                    choice = any(getattr(e.func, "id", "") == "Choice" for e in extras)
                    ann = base
                if isinstance(ann, ast.Subscript) and getattr(ann.value, "id", "") == "Union":
                    name = "node" if all(getattr(e, "id", "").startswith("vtkMRML") for e in ann.slice.elts) else "Union"
                else:
                    name = "node" if getattr(ann, "id", "").startswith("vtkMRML") else ast.unparse(ann)
                out[st.target.id] = (name, choice)
    return out


# Widget classes Slicer's parameterNodeWrapper connects to each type (slicer/parameterNodeWrapper/guiConnectors.py)
CONNECTABLE = {"int": {"QSpinBox", "QSlider"}, "float": {"QDoubleSpinBox", "ctkSliderWidget"},
               "str": {"QLineEdit", "QTextEdit"}, "bool": {"QCheckBox", "QPushButton"},
               "node": {"qMRMLNodeComboBox"}, "pathlib.Path": {"ctkPathLineEdit", "ctkDirectoryButton"}}


@pytest.mark.parametrize("name", MODULES)
def test_every_bound_widget_has_a_connector_for_its_field_type(name):
    kinds = _field_kinds(module_source(name))
    classes = {w.get("name"): w.get("class") for w in ui_tree(name).iter("widget")}
    for field, widget in ui_parameter_bindings(name).items():
        base, choice = kinds[field]
        widget_class = classes[widget]
        if widget_class == "QComboBox":
            assert choice and base in ("int", "float", "str", "bool"), f"{field}: a QComboBox needs a Choice annotation"
        else:
            assert widget_class in CONNECTABLE.get(base, set()), f"{field}: {base} cannot bind to {widget_class}"


@pytest.mark.parametrize("name", MODULES)
def test_module_icon_is_found_by_the_resources_helper(name):
    import sys
    sys.path.insert(0, str(ROOT / "PETDiffusion"))
    from PETDiffusionSlicer.resources import icon_path
    assert icon_path(name) == str(ROOT / "Resources" / "Icons" / f"{name}.png")
    assert f'icon_path("{name}")' in module_source(name)
    assert icon_path("NoSuchModule") is None


# --------------------------------------------------------------------------------------------
# Catalogue readiness (issue 18)
# --------------------------------------------------------------------------------------------
# The Slicer extensions catalog entry schema v1.0.1 (Slicer/Slicer Schemas/
# slicer-extension-catalog-entry-schema-v1.0.1.json): required "$schema", "category", "scm_url"; no
# other properties than these; types as below; scm_type "git" or "local"; tier 1, 3 or 5.
CATALOG_SCHEMA_URL = ("https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/"
                      "slicer-extension-catalog-entry-schema-v1.0.1.json#")
CATALOG_REQUIRED = ("$schema", "category", "scm_url")
CATALOG_TYPES = {"$schema": str, "category": str, "scm_url": str, "scm_revision": str, "scm_type": str,
                 "build_dependencies": list, "build_subdirectory": str, "enabled": bool, "tier": int}
CATALOG_ENUMS = {"scm_type": ("git", "local"), "tier": (1, 3, 5)}


def catalog_problems(entry: dict) -> list[str]:
    problems = [f"missing required {k!r}" for k in CATALOG_REQUIRED if k not in entry]
    problems += [f"property {k!r} not in the schema" for k in entry if k not in CATALOG_TYPES]
    for key, typ in CATALOG_TYPES.items():
        if key in entry and (not isinstance(entry[key], typ) or (typ is int and isinstance(entry[key], bool))):
            problems.append(f"{key!r} must be {typ.__name__}")
    for key, allowed in CATALOG_ENUMS.items():
        if key in entry and entry[key] not in allowed:
            problems.append(f"{key!r} must be one of {allowed}")
    if not all(isinstance(d, str) for d in entry.get("build_dependencies", [])):
        problems.append("build_dependencies must be strings")
    return problems


def test_catalog_validator_rejects_what_the_schema_rejects():
    assert catalog_problems({"category": "x"}) == ["missing required '$schema'", "missing required 'scm_url'"]
    assert "property 'homepage' not in the schema" in catalog_problems(
        {"$schema": "s", "category": "c", "scm_url": "u", "homepage": "h"})
    assert catalog_problems({"$schema": "s", "category": "c", "scm_url": "u", "tier": 2}) == ["'tier' must be one of (1, 3, 5)"]


def test_extension_index_entry_validates_and_builds_with_pytorch():
    entry = json.loads((ROOT / "PETDiffusion.json").read_text())
    assert catalog_problems(entry) == []
    assert entry["$schema"] == CATALOG_SCHEMA_URL
    assert "PyTorch" in entry["build_dependencies"]
    cmake = (ROOT / "CMakeLists.txt").read_text()
    assert entry["category"] == re.search(r'set\(EXTENSION_CATEGORY "([^"]+)"\)', cmake).group(1)
    assert re.search(r'set\(EXTENSION_DEPENDS "PyTorch"\)', cmake)
    assert entry["scm_url"].startswith(re.search(r'set\(EXTENSION_HOMEPAGE "([^"#]+)', cmake).group(1))


def test_license_is_the_apache_2_0_text_pyproject_names():
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    assert "END OF TERMS AND CONDITIONS" in text and len(text.splitlines()) > 190   # the full text
    import tomllib
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"] == "Apache-2.0"


def test_packaged_requirements_are_the_pinned_pyproject_dependencies():
    import tomllib
    pinned = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    lines = [ln.split("#", 1)[0].strip() for ln in (ROOT / "Resources" / "requirements.txt").read_text().splitlines()]
    listed = [ln for ln in lines if ln]
    assert listed == pinned
    assert all("==" in r for r in listed) and any(r.startswith("einops==") for r in listed)


def test_help_links_acknowledgements_with_dois_and_supported_versions():
    import sys
    sys.path.insert(0, str(ROOT / "PETDiffusion"))
    from PETDiffusionSlicer import about
    for name in MODULES:
        source = module_source(name)
        assert f'about.help_text("{name}"' in source and f'about.acknowledgement_text("{name}")' in source
        assert "self.parent.contributors = list(about.CONTRIBUTORS)" in source
        ack = about.acknowledgement_text(name)
        citation, doi, url = about.PAPERS[about.MODULE_METHOD[name]]
        if doi:
            assert re.search(r"doi:10\.48550/arXiv\.\d{4}\.\d{5}", ack) and doi in ack, ack
        else:   # STMDiff (MICCAI 2025): no DOI published yet, its open-access page instead
            assert url in ack and "no DOI yet" in ack
    assert about.PAPERS["AMDiff"][1] == "10.48550/arXiv.2503.13257"
    assert about.PAPERS["CPDM"][1] == "10.48550/arXiv.2410.21932"   # the arXiv id in the seed paper's text
    helptext = about.help_text("PETDenoiseSegment", "x")
    assert about.SUPPORTED_SLICER in helptext and "not diffusion MRI" in helptext
    for url in about.DOCS.values():
        assert url in helptext
        if "/blob/main/" in url:   # documentation shipped in this repository
            assert (ROOT / url.split("/blob/main/", 1)[1]).is_file(), url
    assert sys.version_info[:2] >= about.MINIMUM_PYTHON    # the tests run on the Python the library needs
