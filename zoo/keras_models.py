"""The Keras/TensorFlow member's network (after R1 and R2): a U-Net that outputs logits, as the PyTorch
members do (the sigmoid is in the loss and in prediction).

TensorFlow is imported inside functions (`load_keras`, configured once) so the workbench starts fast.
"""

from __future__ import annotations

import importlib.util
import os
import sys

from zoo.spec import MemberSpec

_threads_set = False  # TensorFlow's thread pools were sized in this process (import_tensorflow)


def import_tensorflow(threads: int | None = None):
    """The tensorflow module, imported quietly and safely: whatever may be a process's first import of
    TensorFlow goes through here. Triton (which torch.optim and torchvision load through torch._dynamo)
    segfaults when it is imported after TensorFlow, so a process that runs both families (a Keras member,
    then a PyTorch one) must load it first.

    The one home of TensorFlow's thread pools: `threads` sizes them (the workbench's `compute.threads`);
    the first call without it, all cores. Only possible before TensorFlow's runtime starts; after that the
    first setting stays."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" not in sys.modules and importlib.util.find_spec("triton") is not None:
        import triton  # noqa: F401
    import tensorflow as tf

    global _threads_set
    if threads or not _threads_set:
        pool = threads or os.cpu_count() or 1
        try:
            tf.config.threading.set_intra_op_parallelism_threads(pool)
            tf.config.threading.set_inter_op_parallelism_threads(pool)
        except RuntimeError:
            pass
        _threads_set = True
    return tf


def load_keras():
    """(tensorflow, keras), configured once: quiet logs, GPU memory as needed, mixed precision on a GPU."""
    tf = import_tensorflow()
    import keras

    if not getattr(load_keras, "done", False):
        gpus = tf.config.list_physical_devices("GPU")
        for gpu in gpus:
            try:  # take GPU memory as needed, not all of it up front
                tf.config.experimental.set_memory_growth(gpu, True)
            except RuntimeError:
                pass
        if gpus:
            keras.mixed_precision.set_global_policy("mixed_float16")
        load_keras.done = True
    return tf, keras


def build_keras_unet(spec: MemberSpec):
    """U-Net: `spec.depth` conv-BN-ReLU blocks (two 3x3 convs) with max-pool down, `spec.filters`
    doubling per step, a centre block, UpSampling2D + skip concatenation up, a 1x1 conv to one logit.

    Fully convolutional: input (h, w, 3) float in [0, 1] for any h, w divisible by 2**depth (photos
    padded, crops, tiles); output (h, w, 1) float32 logits.
    """
    _, keras = load_keras()
    layers = keras.layers
    inputs = keras.Input((None, None, 3), name="image")
    x, skips = inputs, []
    for level in range(spec.depth):
        x = _conv_block(layers, x, spec.filters * 2**level, f"down{level}")
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"pool{level}")(x)
    x = _conv_block(layers, x, spec.filters * 2**spec.depth, "centre")
    for level in reversed(range(spec.depth)):
        x = layers.UpSampling2D(2, name=f"upsample{level}")(x)
        x = layers.Concatenate(name=f"skip{level}")([x, skips[level]])
        x = _conv_block(layers, x, spec.filters * 2**level, f"up{level}")
    logits = layers.Conv2D(1, 1, dtype="float32", name="logits")(x)  # float32 even under mixed precision
    return keras.Model(inputs, logits, name=spec.name)


def _conv_block(layers, x, filters: int, name: str):
    for i in (1, 2):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv{i}")(x)
        # momentum 0.9 = PyTorch's 0.1: Keras's 0.99 leaves the running statistics far from the
        # data after the few hundred steps of a short run, and inference then fails
        x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn{i}")(x)
        x = layers.Activation("relu", name=f"{name}_relu{i}")(x)
    return x
