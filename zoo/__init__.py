"""The member zoo: the catalogue, model builders, fold training and prediction (PyTorch, Keras, baselines).

Names are imported from their modules on first use, so `import zoo.spec` loads no framework.
"""
from typing import Any

from carvana.lazy import lazy_attribute

_HOMES = {
    "MEMBERS": "zoo.registry",
    "resolve_members": "zoo.registry",
    "MemberSpec": "zoo.spec",
    "TrainConfig": "zoo.spec",
    "PredictConfig": "zoo.spec",
    "predict_photos": "zoo.predict",
    "member_name": "zoo.spec",
    "FoldData": "zoo.fold_data",
    "split_fold": "zoo.fold_data",
    "load_member": "zoo.members",
    "build_torch_model": "zoo.torch_models",
    "train_fold": "zoo.train_torch",
    "train_keras_fold": "zoo.keras_unet",
    "claim_member": "zoo.runner",
    "run_member_fold": "zoo.runner",
    "predict_member_test": "zoo.runner",
    "member_finished": "zoo.runner",
}
__all__ = list(_HOMES)


def __getattr__(name: str) -> Any:
    return lazy_attribute(__name__, _HOMES, name)
