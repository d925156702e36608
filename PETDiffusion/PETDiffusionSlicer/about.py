"""What the modules say about themselves: help text with documentation links, acknowledgements with the
DOI of each method's paper, contributors and the supported Slicer versions. Plain Python (no Qt), so
that Testing/test_slicer_static.py can check it.
"""
from __future__ import annotations

HOMEPAGE = "https://github.com/PETDiffusion/PETDiffusion"
DOCS = {
    "first run in Slicer": f"{HOMEPAGE}/blob/main/docs/slicer_tutorial.md",
    "install and how a run works": f"{HOMEPAGE}/blob/main/docs/slicer_install.md",
    "library and models": f"{HOMEPAGE}#readme",
}
CONTRIBUTORS = ["PETDiffusion contributors (PETDiffusion project)"]

#: Slicer releases whose Python (3.11 or later) runs the library with its pinned packages (numpy 2.4 and
#: torch 2.13 need Python >= 3.11; pyproject.toml requires >= 3.10). Checked here with the slicer-core
#: 5.11.0.6 wheel on Python 3.11.
SUPPORTED_SLICER = "3D Slicer whose Python is 3.11 or later (the Slicer 5.10 series and later)"
MINIMUM_PYTHON = (3, 11)

#: The papers of the methods the modules run and of the ones planned, with their arXiv DOIs
#: (DOI prefix 10.48550 is arXiv's; identifiers as listed on arxiv.org).
PAPERS = {
    "AMDiff": ("Xia M, Ko K-Y, Wang D-S, et al. Anatomically and metabolically informed diffusion for unified "
               "denoising and segmentation in low-count PET imaging", "10.48550/arXiv.2503.13257"),
    "CPDM": ("Nguyen DT, Nguyen TT, Nguyen HT, et al. CT to PET translation: a large-scale dataset and "
             "domain-knowledge-guided diffusion approach", "10.48550/arXiv.2410.21932"),
    "MFdiff": ("Zhang Y, Chen S, Tian Y, et al. Supervise-assisted multi-modality fusion diffusion model for PET "
               "restoration", "10.48550/arXiv.2602.11545"),
    "TotalGen": ("Yoon S, Song S, Jin P, et al. Cascaded 3D diffusion models for whole-body 3D 18-F FDG PET/CT "
                 "synthesis from demographics", "10.48550/arXiv.2505.22489"),
}
#: Module -> the method paper it runs.
MODULE_METHOD = {"PETDenoiseSegment": "AMDiff", "CTtoPETSynthesis": "CPDM"}

RESEARCH_USE = "Research use only, not for diagnosis."
NOT_DIFFUSION_MRI = ("\"Diffusion\" here means generative diffusion models (denoising diffusion, Brownian "
                     "bridge), not diffusion MRI.")


def doi_link(doi: str) -> str:
    return f'<a href="https://doi.org/{doi}">doi:{doi}</a>'


def help_text(module: str, summary: str) -> str:
    """The module's help: what it does (``summary``), documentation links, supported Slicer versions."""
    links = "<br>".join(f'<a href="{url}">{name}</a>' for name, url in DOCS.items())
    return (f"{summary}<br><br>{NOT_DIFFUSION_MRI} {RESEARCH_USE}<br><br>Documentation:<br>{links}<br><br>"
            f"Supported: {SUPPORTED_SLICER}. PyTorch comes from the PyTorch extension (installed with this one).")


def acknowledgement_text(module: str) -> str:
    """The method paper of the module with its DOI, then the software it is built on."""
    title, doi = PAPERS[MODULE_METHOD[module]]
    return (f"Method: {MODULE_METHOD[module]}, {title}. {doi_link(doi)}.<br>"
            "Sample data: IBSI/TCIA Soft-tissue Sarcoma (Vallieres et al. 2015, "
            '<a href="https://doi.org/10.7937/K9/TCIA.2015.7GO2GSKS">doi:10.7937/K9/TCIA.2015.7GO2GSKS</a>, '
            "CC BY 3.0).<br>Built on 3D Slicer, MONAI and PyTorch.")
