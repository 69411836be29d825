"""SE models: DCCRN, Conv-TasNet, DPTNet and DPDCRN, built by name from presets."""
from selib.models.base import FAMILIES, STAGES, SEModel, build, presets

__all__ = ["FAMILIES", "STAGES", "SEModel", "build", "presets"]
