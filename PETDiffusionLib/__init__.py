"""PETDiffusionLib: PET/CT diffusion methods, quantification and reports. Never imports slicer/qt/vtk."""
__version__ = "0.1.0"
