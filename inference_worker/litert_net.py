"""The served network on LiteRT (XNNPACK): the classifier's CPU path when the model folder has model.tflite.

On a 2-core host it classifies one face in about a third of TensorFlow's time (TF's per-call overhead is most
of a small face's cost) and a batch of 32 about a quarter faster; `bench/worker_latency.py` measures both.
The file is written and checked against the Keras model by the trainer (trainer/litert_export.py).
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np


def probe_inputs(size: int) -> np.ndarray:
    """Two fixed 0-255 inputs (noise and a smooth gradient) on which a LiteRT copy must match its Keras model."""
    x = np.random.default_rng(0).uniform(0, 255, (2, size, size, 3)).astype(np.float32)
    x[1] = np.linspace(0, 255, size, dtype=np.float32)[None, :, None]
    return x


class LiteNet:
    """One .tflite network with a dynamic batch; re-sized only when the batch size changes (cheap after the first)."""

    def __init__(self, path: Path, threads: int) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self._interp = Interpreter(model_path=str(path), num_threads=threads)
        detail = self._interp.get_input_details()[0]
        self._input = detail["index"]
        self.size = int(detail["shape"][1])  # the working size it takes (after the model's own resize)
        self._output = self._interp.get_output_details()[0]["index"]
        self._batch = -1
        self._lock = threading.Lock()  # an interpreter is not safe to call from two threads at once

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """P(fake) per row of a float32 batch (N, size, size, 3)."""
        with self._lock:
            if x.shape[0] != self._batch:
                self._interp.resize_tensor_input(self._input, [x.shape[0], self.size, self.size, 3])
                self._interp.allocate_tensors()
                self._batch = x.shape[0]
            self._interp.set_tensor(self._input, np.ascontiguousarray(x, np.float32))
            self._interp.invoke()
            return self._interp.get_tensor(self._output).reshape(-1).copy()
