"""Trained members behind one call, whatever the framework:
`predict_proba(images (N, H, W, 3) uint8, angles=None) -> (N, H, W) float32` in [0, 1].

Several checkpoints (one per fold model) make one member whose maps are their average: that is how
the test set is predicted.
"""

from __future__ import annotations

from pathlib import Path

from zoo.avg_mask import AvgMaskMember
from zoo.spec import MemberSpec


def load_member(spec: MemberSpec, checkpoint_paths: list[Path]):
    """The trained member for `spec` from its fold checkpoints (several are averaged)."""
    if spec.arch == "avg_mask":
        return AvgMaskMember(spec, checkpoint_paths)
    if spec.framework == "keras":
        from zoo.keras_member import KerasMember

        return KerasMember(spec, checkpoint_paths)
    from zoo.torch_member import TorchMember

    return TorchMember(spec, checkpoint_paths)
