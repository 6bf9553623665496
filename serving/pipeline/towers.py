"""Where the encode stage's user tower runs: one provider per kind, each preparing the tower of
an index version for a bundle (serving.pipeline.bundle.PrepareEncoder).

- `InProcessTowers` — onnxruntime in the service's own process
- `TritonTowers` — each version's tower as a numbered version of the Triton model `user_tower`:
  added to the repositories, loaded beside the one serving, released after a swap, with the same
  ONNX in-process as the fallback. A version whose load fails (Triton down or hung during a
  publish) is taken out of the repositories again, so a retry starts clean and Triton never
  keeps a version the service gave up on.
- `SharedTritonTowers` — the same towers, in a service worker: another process (the workers'
  parent) publishes and retires versions; a worker waits for a version to answer.
"""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

from common.errors import UnavailableError
from index.onnx import OnnxEncoder
from index.store import USER_TOWER
from serving.pipeline.bundle import Tower, version_number
from serving.triton import repository
from serving.triton.client import UserTowerClient
from serving.triton.repository import MODEL_NAME
from serving.triton.server import CONTROL_HEADER

READY_TIMEOUT_S = 60.0
"""How long a version may take to load on Triton before the swap to it is given up (retried
at the next poll)."""


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
        self.supervisor = None  # a serving.triton.supervisor.Supervisor of `server`, if any

    @property
    def model_dir(self) -> Path:
        return self.repository / repository.LOCAL / MODEL_NAME

    def add(self, onnx: Path, number: int) -> None:
        """Put version `number` in both repositories (written on first use); a folder of that
        number left by an attempt that failed is replaced."""
        self._remove(number)
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

    def _remove(self, number: int) -> None:
        """Version `number`'s folders out of both repositories, if there (a later load
        unloads it from Triton)."""
        for kind in (repository.LOCAL, repository.PRODUCTION):
            model_dir = self.repository / kind / MODEL_NAME
            if not (model_dir / str(number)).exists():
                continue
            if repository.versions(model_dir) == [number]:  # the last: no successor to keep
                shutil.rmtree(model_dir / str(number))
            else:
                repository.remove_version(model_dir, number)

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
        key = self.settings.control_key
        headers = {CONTROL_HEADER: key} if key else None
        with contextlib.closing(tc.InferenceServerClient(self.url)) as client:
            client.load_model(MODEL_NAME, headers=headers)

    def reload(self) -> None:
        """Load the versions the repositories hold again (after Triton restarted)."""
        with self._lock:
            self.load()

    def publish(self, folder: Path, version: str) -> int:
        """Make an index version's tower ready on Triton (added, loaded, answering); returns
        its model version number. A version that fails is taken out again, then raises."""
        number = version_number(version)
        try:
            with self._lock:
                self.add(folder / USER_TOWER, number)
                self.load()
            self._wait_ready(number)
        except Exception:
            self._give_up(number)
            raise
        return number

    def retire(self, number: int) -> None:
        """Unload a version that no longer serves (out of the repositories, then a load)."""
        with self._lock:
            for kind in (repository.LOCAL, repository.PRODUCTION):
                repository.remove_version(self.repository / kind / MODEL_NAME, number)
            self.load()

    def __call__(self, folder: Path, version: str):
        number = self.publish(folder, version)
        return self.tower(folder, number, release=lambda: self.retire(number))

    def tower(self, folder: Path, number: int, release=None) -> Tower:
        """Version `number` on Triton as a Tower, with the same ONNX in this process as the
        fallback for when Triton does not answer."""

        def encode(inputs):
            return self.client.encode(inputs, model_version=str(number))

        fallback = OnnxEncoder(folder / USER_TOWER, threads=1).encode
        name = f"{self.name} {MODEL_NAME}/{number}"
        return Tower(encode, tuple(self.client.inputs), name, release, fallback)

    def _wait_ready(self, number: int, timeout_s: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.client.ready(str(number)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"Triton did not make {MODEL_NAME} version {number} ready")
            time.sleep(0.1)

    def _give_up(self, number: int) -> None:
        """A version that failed to load: out of the repositories, and out of Triton if it
        answers (if it does not, the next load after it is back leaves the version out)."""
        with self._lock:
            self._remove(number)
            with contextlib.suppress(Exception):
                self.load()


class SharedTritonTowers(TritonTowers):
    """A worker's view of a Triton whose repository another process publishes to (the parent
    of several service workers, serving.workers.Publisher): a version's tower is used once
    `published()` lists its number, never added, loaded or unloaded from here."""

    def __init__(self, repository: Path, url: str, settings, published: Callable[[], list[int]]):
        super().__init__(repository, url, settings)
        self.published = published

    def __call__(self, folder: Path, version: str):
        number = version_number(version)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while number not in self.published():
            if time.monotonic() > deadline:
                raise UnavailableError(
                    f"{MODEL_NAME}/{number} ({version}) was not published on Triton within "
                    f"{READY_TIMEOUT_S:.0f} s; the service's parent process publishes it"
                )
            time.sleep(0.2)
        return self.tower(folder, number)
