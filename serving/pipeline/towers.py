"""Where the encode stage's user tower runs: one provider per kind, each preparing the tower of
an index version for a bundle (serving.pipeline.bundle.PrepareEncoder).

- `InProcessTowers` — onnxruntime in the service's own process
- `TritonTowers` — each version's tower as a numbered version of the Triton model `user_tower`:
  added to the repositories, loaded beside the one serving, released after a swap
"""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

from index.onnx import OnnxEncoder
from index.store import USER_TOWER
from serving.pipeline.bundle import Tower, version_number
from serving.triton import repository
from serving.triton.client import UserTowerClient
from serving.triton.repository import MODEL_NAME


class InProcessTowers:
    """Each version's ONNX tower run by onnxruntime inside the service process."""

    name = "onnxruntime (in-process)"

    def __init__(self, threads: int = 1):
        self.threads = threads

    def __call__(self, folder: Path, version: str):
        encoder = OnnxEncoder(folder / USER_TOWER, threads=self.threads)
        return Tower(encoder.encode, tuple(encoder.inputs), self.name)


class TritonTowers:
    """Each version's tower as a version of the Triton model `user_tower` (local repository)."""

    def __init__(self, repository: Path, url: str, settings, server=None):
        self.repository = Path(repository)
        self.settings = settings
        self.url = url
        self.server = server  # a serving.triton.server.TritonServer we started, or None
        self.client = UserTowerClient(
            url, protocol=settings.protocol, model_name=MODEL_NAME, timeout_s=settings.timeout_s,
            max_batch_size=settings.max_batch_size,
        )  # fmt: skip
        self._lock = threading.Lock()
        self.name = f"triton {settings.protocol}://{url}"

    @property
    def model_dir(self) -> Path:
        return self.repository / repository.LOCAL / MODEL_NAME

    def add(self, onnx: Path, number: int) -> None:
        """Put version `number` in both repositories (written on first use)."""
        s = self.settings
        if not (self.model_dir / repository.CONFIG).exists():
            repository.write_repositories(
                onnx, self.repository, version=number, max_batch_size=s.max_batch_size,
                dynamic_batching=s.dynamic_batching, max_queue_delay_us=s.max_queue_delay_us,
                instances=s.instances,
            )  # fmt: skip
            return
        for kind in (repository.LOCAL, repository.PRODUCTION):
            repository.add_version(self.repository / kind / MODEL_NAME, onnx, number)

    def load(self) -> None:
        """Explicit model control: (re)load `user_tower` with every version in the repository
        (Triton keeps the served versions answering while it loads)."""
        if self.server is not None:
            self.server.load_model(MODEL_NAME)
            return
        if self.settings.protocol == "grpc":
            import tritonclient.grpc as tc
        else:
            import tritonclient.http as tc
        with contextlib.closing(tc.InferenceServerClient(self.url)) as client:
            client.load_model(MODEL_NAME)

    def __call__(self, folder: Path, version: str):
        number = version_number(version)
        with self._lock:
            self.add(folder / USER_TOWER, number)
            self.load()
        deadline = time.monotonic() + 60
        while not self.client.ready(str(number)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"Triton did not make {MODEL_NAME} version {number} ready")
            time.sleep(0.1)

        def encode(inputs):
            return self.client.encode(inputs, model_version=str(number))

        def release():
            with self._lock:
                for kind in (repository.LOCAL, repository.PRODUCTION):
                    repository.remove_version(self.repository / kind / MODEL_NAME, number)
                self.load()

        # the same file in this process, for when Triton does not answer
        fallback = OnnxEncoder(folder / USER_TOWER, threads=1).encode
        name = f"{self.name} {MODEL_NAME}/{number}"
        return Tower(encode, tuple(self.client.inputs), name, release, fallback)
