"""The one custom Keras layer a served model may contain. Import-light (Keras only).

It lives with the worker, the consumer of model files: the worker (and the trainer, which builds the
models) import this module before `keras.saving.load_model`, so the registration is in place.
"""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="zhenjia")
class HorizontalFlip(keras.layers.Layer):
    """Mirror images left-right, always (RandomFlip is random and a no-op at inference)."""

    def call(self, x):
        return keras.ops.flip(x, axis=2)

    def compute_output_shape(self, input_shape):
        return input_shape


def with_flip_average(model: keras.Model) -> keras.Model:
    """Test-time augmentation inside the model: P(fake) averaged over the face and its mirror image.

    A face is as real or as fake mirrored; averaging the two views removes part of the network's
    variance. On the sample's valid split it took the default model from 85.9% to 87.5% accuracy
    (ROC-AUC 0.933 -> 0.945) for twice the classifier cost (~3 ms more per face on 2 CPU cores).
    """
    inp = keras.Input(shape=model.input_shape[1:], name="image")
    a = model(inp)
    b = model(HorizontalFlip(name="mirror")(inp))
    out = keras.layers.Average(name="flip_average")([a, b])
    return keras.Model(inp, out, name=f"{model.name}_flipavg")
