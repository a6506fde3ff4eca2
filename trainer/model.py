"""The Conv1D autoencoder: the seed's topology over a window of W consecutive feature vectors."""
from __future__ import annotations

import keras
import numpy as np
from keras import layers


def build_autoencoder(window: int, channels: int) -> keras.Model:
    """Conv1D(16,4) -> Conv1D(4,4) -> Conv1D(4,4) -> Conv1D(16,4) -> TimeDistributed(Dense(channels)).

    W=1 is exactly the seed's model on input (1, channels): kernel 4, same padding, relu, Adam, MAE loss.
    """
    model = keras.Sequential(
        [
            keras.Input(shape=(window, channels)),
            layers.Conv1D(16, 4, padding="same", activation="relu"),
            layers.Conv1D(4, 4, padding="same", activation="relu"),
            layers.Conv1D(4, 4, padding="same", activation="relu"),
            layers.Conv1D(16, 4, padding="same", activation="relu"),
            layers.TimeDistributed(layers.Dense(channels)),
        ],
        name="conv1d_autoencoder",
    )
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=1e-3), loss="mae")
    return model


def windows(scaled: np.ndarray, window: int) -> np.ndarray:
    """(N, channels) -> (N-W+1, W, channels) float32: every run of W consecutive feature vectors."""
    view = np.lib.stride_tricks.sliding_window_view(scaled, window, axis=0)  # (N-W+1, channels, W)
    return np.ascontiguousarray(view.transpose(0, 2, 1), dtype=np.float32)
