"""The member zoo: the catalogue, model builders, fold training and prediction (PyTorch, Keras, baselines).

Names are imported from their modules on first use, so `import zoo.spec` loads no framework.
"""

from carvana.lazy import lazy_getattr, public_names

_EXPORTS = {
    "zoo.registry": ["MEMBERS", "resolve_members"],
    "zoo.spec": ["MemberSpec", "TrainConfig", "PredictConfig"],
    "zoo.fold_data": ["FoldData"],
    "zoo.families": ["FAMILIES", "family_of", "build_network", "load_member", "train_member_fold"],
    "zoo.predict": ["predict_photos"],
    "zoo.torch_models": ["build_torch_model"],
    "zoo.train_torch": ["train_fold"],
    "zoo.train_keras": ["train_keras_fold"],
    "zoo.runner": ["claim_member", "run_member_fold", "predict_member_test", "member_finished"],
}
__all__ = public_names(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)
