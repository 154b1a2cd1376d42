"""A Keras callback that keeps each training step's loss, for the helper scripts here that
compare two training paths step by step (imported from the script's own folder)."""

import keras


class Losses(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.losses = []

    def on_train_batch_end(self, batch, logs=None):
        self.losses.append(float(logs["loss"]))
