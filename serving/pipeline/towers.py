"""Where the encode stage's user tower runs: one provider per kind, each preparing the tower of
an index version for a bundle (serving.pipeline.bundle.PrepareEncoder).

- `InProcessTowers` — onnxruntime in the service's own process
- `TritonTowers` — each version's tower as a numbered version of the Triton model `user_tower`
  (and its query encoder, where it has one, of `query_encoder`, creator search's second model):
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
from index.store import QUERY_ENCODER, USER_TOWER
from ranking import store as ranking_store
from ranking.ranker import OnnxRanker
from serving.pipeline.bundle import Ranker, Tower, version_number
from serving.triton import repository
from serving.triton.client import UserTowerClient
from serving.triton.repository import MODEL_NAME, QUERY_MODEL_NAME, RANKER_MODEL_NAME
from serving.triton.server import CONTROL_HEADER

MODELS = {MODEL_NAME: USER_TOWER, QUERY_MODEL_NAME: QUERY_ENCODER}
"""The Triton models of an index version, by the version file each serves; the version's
ranker (RANKER_MODEL_NAME) comes from the ranking store instead."""
ALL_MODELS = (*MODELS, RANKER_MODEL_NAME)
READY_TIMEOUT_S = 60.0
"""How long a version may take to load on Triton before the swap to it is given up (retried
at the next poll)."""


def ranker_folder(rank_store: str | Path | None, version: str) -> Path | None:
    """The ranking store's folder for an index version (checked), or None: ranked by retrieval."""
    return ranking_store.find(rank_store, version)


def in_process_ranker(folder: Path, name: str = "onnxruntime (in-process)") -> Ranker:
    model = OnnxRanker(folder / ranking_store.RANKER)
    return Ranker(model.encode, name, ranking_store.read_manifest(folder), folder=folder)


class InProcessTowers:
    """Each version's ONNX tower (and ranker, where the ranking store has one) run by
    onnxruntime inside the service process."""

    name = "onnxruntime (in-process)"

    def __init__(self, threads: int = 1, rank_store: str | Path | None = None):
        self.threads = threads
        self.rank_store = rank_store

    def __call__(self, folder: Path, version: str):
        encoder = OnnxEncoder(folder / USER_TOWER, threads=self.threads)
        tower = Tower(encoder.encode, tuple(encoder.inputs), self.name)
        ranks = ranker_folder(self.rank_store, version)
        tower.ranker = in_process_ranker(ranks, self.name) if ranks else None
        return tower


class TritonTowers:
    """Each version's models as versions of the Triton models `user_tower` and, where the
    version has creator search's query encoder, `query_encoder` (local repository)."""

    def __init__(self, repository: Path, url: str, settings, server=None, rank_store=None):
        self.repository = Path(repository)
        self.settings = settings
        self.url = url
        self.server = server  # a serving.triton.server.TritonServer we started, or None
        self.rank_store = rank_store
        self.clients = {name: self._client(name) for name in ALL_MODELS}
        self.client = self.clients[MODEL_NAME]
        self._lock = threading.Lock()
        self._loaded: set[str] = set()  # the models this provider asked Triton to load
        self.name = f"triton {settings.protocol}://{url}"
        self.supervisor = None  # a serving.triton.supervisor.Supervisor of `server`, if any

    def _client(self, model: str) -> UserTowerClient:
        s = self.settings
        return UserTowerClient(
            self.url, protocol=s.protocol, model_name=model, timeout_s=s.timeout_s,
            max_batch_size=s.max_batch_size,
        )  # fmt: skip

    def model_dir(self, model: str = MODEL_NAME, kind: str = repository.LOCAL) -> Path:
        return self.repository / kind / model

    def files_of(self, folder: Path, version: str) -> dict[str, Path]:
        """The Triton models of an index version and the ONNX file each serves: the user tower
        always, the query encoder where the version has one, the ranker where the ranking
        store has one for it."""
        files = {name: Path(folder) / file for name, file in MODELS.items()}
        files = {name: path for name, path in files.items() if path.exists()}
        ranks = ranker_folder(self.rank_store, version)
        if ranks is not None:
            files[RANKER_MODEL_NAME] = ranks / ranking_store.RANKER
        return files

    def add(self, onnx: Path, number: int, model: str = MODEL_NAME) -> None:
        """Put version `number` of `model` in both repositories (written on first use); a
        folder of that number left by an attempt that failed is replaced."""
        self._remove(number, model)
        s = self.settings
        if not (self.model_dir(model) / repository.CONFIG).exists():
            repository.write_repositories(
                onnx, self.repository, version=number, max_batch_size=s.max_batch_size,
                dynamic_batching=s.dynamic_batching, max_queue_delay_us=s.max_queue_delay_us,
                instances=s.instances, model_name=model,
            )  # fmt: skip
            return
        for kind in (repository.LOCAL, repository.PRODUCTION):
            repository.add_version(self.model_dir(model, kind), onnx, number)

    def _remove(self, number: int, model: str) -> None:
        """Version `number` of `model` out of both repositories, if there (a later load
        unloads it from Triton); the last version takes the model's folders with it."""
        for kind in (repository.LOCAL, repository.PRODUCTION):
            model_dir = self.model_dir(model, kind)
            if not (model_dir / str(number)).exists():
                continue
            if repository.versions(model_dir) == [number]:  # the last: no successor to keep
                shutil.rmtree(model_dir)
            else:
                repository.remove_version(model_dir, number)

    def load(self, models: list[str] | None = None) -> None:
        """Explicit model control: (re)load each model with every version in the repository
        (Triton keeps the served versions answering while it loads); a model whose folder is
        gone is unloaded."""
        for model in ALL_MODELS if models is None else models:
            if (self.model_dir(model) / repository.CONFIG).exists():
                self._control(model, "load")
                self._loaded.add(model)
            elif model in self._loaded:  # its last version retired
                self._control(model, "unload")
                self._loaded.discard(model)

    def _control(self, model: str, action: str) -> None:
        if self.server is not None:
            getattr(self.server, f"{action}_model")(model)
            return
        if self.settings.protocol == "grpc":
            import tritonclient.grpc as tc
        else:
            import tritonclient.http as tc
        key = self.settings.control_key
        headers = {CONTROL_HEADER: key} if key else None
        with contextlib.closing(tc.InferenceServerClient(self.url)) as client:
            getattr(client, f"{action}_model")(model, headers=headers)

    def reload(self) -> None:
        """Load the versions the repositories hold again (after Triton restarted)."""
        with self._lock:
            self.load()

    def publish(self, folder: Path, version: str) -> int:
        """Make an index version's models ready on Triton (added, loaded, answering); returns
        their model version number. A version that fails is taken out again, then raises."""
        number, files = version_number(version), self.files_of(folder, version)
        models = list(files)
        try:
            with self._lock:
                for model, path in files.items():
                    self.add(path, number, model)
                self.load(models)
            for model in models:
                self._wait_ready(number, model)
        except Exception:
            self._give_up(number)
            raise
        return number

    def retire(self, number: int) -> None:
        """Unload a version that no longer serves (out of the repositories, then a load)."""
        with self._lock:
            for model in ALL_MODELS:
                self._remove(number, model)
            self.load()

    def __call__(self, folder: Path, version: str):
        number = self.publish(folder, version)
        return self.tower(folder, version, release=lambda: self.retire(number))

    def tower(self, folder: Path, version: str, release=None) -> Tower:
        """An index version's models on Triton as a Tower, with the same ONNX in this process
        as the fallback for when Triton does not answer (the query encoder's and the ranker's
        too, where the version has them)."""
        number = version_number(version)

        def on_server(model: str):
            return lambda inputs: self.clients[model].encode(inputs, model_version=str(number))

        fallback = OnnxEncoder(folder / USER_TOWER, threads=1).encode
        name = f"{self.name} {MODEL_NAME}/{number}"
        tower = Tower(on_server(MODEL_NAME), tuple(self.client.inputs), name, release, fallback)
        files = self.files_of(folder, version)
        if QUERY_MODEL_NAME in files:
            tower.query = on_server(QUERY_MODEL_NAME)
            tower.query_name = f"{self.name} {QUERY_MODEL_NAME}/{number}"
        if RANKER_MODEL_NAME in files:
            ranker = in_process_ranker(files[RANKER_MODEL_NAME].parent)
            ranker.fallback, ranker.score = ranker.score, on_server(RANKER_MODEL_NAME)
            ranker.name = f"{self.name} {RANKER_MODEL_NAME}/{number}"
            tower.ranker = ranker
        return tower

    def _wait_ready(self, number: int, model: str, timeout_s: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.clients[model].ready(str(number)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"Triton did not make {model} version {number} ready")
            time.sleep(0.1)

    def _give_up(self, number: int) -> None:
        """A version that failed to load: out of the repositories, and out of Triton if it
        answers (if it does not, the next load after it is back leaves the version out)."""
        with self._lock:
            for model in ALL_MODELS:
                self._remove(number, model)
            with contextlib.suppress(Exception):
                self.load()


class SharedTritonTowers(TritonTowers):
    """A worker's view of a Triton whose repository another process publishes to (the parent
    of several service workers, serving.workers.Publisher): a version's tower is used once
    `published()` lists its number, never added, loaded or unloaded from here."""

    def __init__(self, repository: Path, url: str, settings, published: Callable[[], list[int]],
                 rank_store=None):  # fmt: skip
        super().__init__(repository, url, settings, rank_store=rank_store)
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
        return self.tower(folder, version)
