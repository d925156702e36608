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

#: The papers of the methods the modules run: (citation, DOI or None, URL). arXiv DOIs have arXiv's
#: prefix 10.48550 (identifiers as listed on arxiv.org); STMDiff (MICCAI 2025) has no DOI yet
#: (papers.miccai.org lists "SpringerLink (DOI): Not yet available"): its open-access page instead.
PAPERS = {
    "AMDiff": ("Xia M, Ko K-Y, Wang D-S, et al. Anatomically and metabolically informed diffusion for unified "
               "denoising and segmentation in low-count PET imaging", "10.48550/arXiv.2503.13257",
               "https://arxiv.org/abs/2503.13257"),
    "CPDM": ("Nguyen DT, Nguyen TT, Nguyen HT, et al. CT to PET translation: a large-scale dataset and "
             "domain-knowledge-guided diffusion approach", "10.48550/arXiv.2410.21932",
             "https://arxiv.org/abs/2410.21932"),
    "MFdiff": ("Zhang Y, Chen S, Tian Y, et al. Supervise-assisted multi-modality fusion diffusion model for PET "
               "restoration", "10.48550/arXiv.2602.11545", "https://arxiv.org/abs/2602.11545"),
    "TotalGen": ("Yoon S, Song S, Jin P, et al. Cascaded 3D diffusion models for whole-body 3D 18-F FDG PET/CT "
                 "synthesis from demographics", "10.48550/arXiv.2505.22489", "https://arxiv.org/abs/2505.22489"),
    "STMDiff": ("Li W, Huang Z, Li L, et al. STMDiff: spatiotemporal matching diffusion model for dual-time-point "
                "total-body PET/CT imaging via contrastive learning. MICCAI 2025", None,
                "https://papers.miccai.org/miccai-2025/0868-Paper3332.html"),
}
#: Module -> the method paper it runs.
MODULE_METHOD = {"PETDenoiseSegment": "AMDiff", "CTtoPETSynthesis": "CPDM", "LowDosePETRestoration": "MFdiff",
                 "DemographicsSynthesis": "TotalGen", "DualTimePointAC": "STMDiff"}

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
    title, doi, url = PAPERS[MODULE_METHOD[module]]
    where = doi_link(doi) if doi else f'<a href="{url}">{url}</a> (no DOI yet)'
    return (f"Method: {MODULE_METHOD[module]}, {title}. {where}.<br>"
            "Sample data: IBSI/TCIA Soft-tissue Sarcoma (Vallieres et al. 2015, "
            '<a href="https://doi.org/10.7937/K9/TCIA.2015.7GO2GSKS">doi:10.7937/K9/TCIA.2015.7GO2GSKS</a>, '
            "CC BY 3.0).<br>Built on 3D Slicer, MONAI and PyTorch.")
