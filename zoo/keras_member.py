"""A trained Keras member: its fold models averaged, predicted as `zoo.predict` says (padded, whole or by
tiles, with the member's TTA views); and the models' mean probability that the training loop validates with.

Nothing here trains: predicting maps imports neither `zoo.train_keras` nor its augmentation library.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from carvana.errors import WorkbenchError
from zoo.keras_models import build_keras_unet
from zoo.predict import predict_photos
from zoo.spec import MemberSpec


def keras_net(models: list):
    """`net((B, h, w, 3) uint8) -> (B, h, w) float32`: the models' mean sigmoid."""
    return lambda batch: np.mean([_sigmoid(_logits(model, batch)) for model in models], axis=0)


def member_net(spec: MemberSpec, models: list):
    """`keras_net` of `spec`'s models (Keras places them on the GPU itself)."""
    return keras_net(models)


class KerasMember:
    """Fold models of one Keras member; several checkpoints are averaged (the test set)."""

    def __init__(self, spec: MemberSpec, checkpoint_paths: list[Path]) -> None:
        if not checkpoint_paths:
            raise WorkbenchError(f"member {spec.name}: no checkpoints given; train its folds first")
        self.spec = spec
        self.models = []
        for path in checkpoint_paths:
            if not Path(path).exists():
                raise WorkbenchError(f"{path} is missing; re-run the member's fold training")
            self.models.append(_load_model(spec, Path(path)))

    def predict_proba(self, images: np.ndarray, angles: np.ndarray | None = None) -> np.ndarray:
        """(N, H, W, 3) uint8 -> (N, H, W) float32 probabilities in [0, 1] (angles are unused)."""
        return predict_photos(keras_net(self.models), np.asarray(images), self.spec, self.spec.train.batch_size)


def _load_model(spec: MemberSpec, path: Path):
    """The model of `spec` with the weights in `path`. Keras only warns (UserWarning) about layers it
    could not fill, which then keep random weights: here that is an error."""
    model = build_keras_unet(spec)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        raised: list[str] = []
        try:
            model.load_weights(path)
        except ValueError as error:
            raised.append(str(error))
    problems = raised + [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    if problems:
        raise WorkbenchError(
            f"{path} does not fit member {spec.name} ({problems[0].splitlines()[0]}); retrain that fold"
        )
    return model


def _logits(model, images: np.ndarray) -> np.ndarray:
    """(B, h, w, 3) uint8 -> (B, h, w) float32 logits."""
    logits = model.predict_on_batch(np.asarray(images, dtype=np.float32) / 255)  # a compiled, retrace-free call
    return np.asarray(logits)[..., 0].astype(np.float32)


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    return (0.5 * (1 + np.tanh(0.5 * logits))).astype(np.float32)  # tanh form cannot overflow
