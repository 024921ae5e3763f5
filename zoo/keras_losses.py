"""The Keras member's loss, as `zoo.torch_losses.segmentation_loss` computes it (a test holds them equal)."""

from __future__ import annotations

from zoo.spec import TrainConfig


def segmentation_loss(logits, target, cfg: TrainConfig, band_px: int):
    """`cfg.loss` (bce_dice or bce_logdice, with `cfg.border_weight`) of (B, h, w, 1) logits against
    (B, h, w, 1) float 0/1 targets, as `zoo.torch_losses.segmentation_loss` computes it."""
    import tensorflow as tf  # not load_keras(): this runs inside traced functions

    weights = tf.ones_like(target)
    if cfg.border_weight != 1:
        k = 2 * band_px + 1
        band = tf.nn.max_pool2d(target, k, 1, "SAME") + tf.nn.max_pool2d(-target, k, 1, "SAME")
        weights = 1 + (cfg.border_weight - 1) * band
    bce_map = tf.nn.sigmoid_cross_entropy_with_logits(labels=target, logits=logits)
    bce = tf.reduce_sum(weights * bce_map) / tf.reduce_sum(weights)

    def flat(t):  # (N, H, W, 1) -> (N, H * W)
        return tf.reshape(t, [tf.shape(t)[0], -1])

    proba, target, weights = flat(tf.sigmoid(logits)), flat(target), flat(weights)
    soft_dice = tf.reduce_mean(
        (2 * tf.reduce_sum(weights * proba * target, 1) + 1)
        / (tf.reduce_sum(weights * proba, 1) + tf.reduce_sum(weights * target, 1) + 1)
    )
    return bce - tf.math.log(soft_dice) if cfg.loss == "bce_logdice" else bce + (1 - soft_dice)
