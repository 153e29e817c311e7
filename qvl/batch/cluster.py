"""Running a batch on a Ray cluster: CPU tasks decode the rows' media, one model actor per GPU
answers them, and the driver (the `qvl batch` process) writes every record as it comes back, so
a job resumes exactly as a local one does.

    for record in answer_on_ray(settings, rows, cache, address="auto", models=None, prefetch=None, on_loaded=print):
        ...

address: "local" (the Ray instance this process already runs, else a new one on this machine),
"auto" (the cluster `ray start` joined this machine to) or a `ray://host:10001` client address.
The rows' files must be readable at the same paths on every node (a shared file system), and
every node needs qvl installed (`pip install 'qvl[cluster]'`).
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Iterator

from qvl.batch.work import WorkerView, answer, engine_info, ready
from qvl.errors import ModelError, OptionError, QvlError, counted, first_line
from qvl.runner import Runner, error_record

# Calls queued on each model actor: one running, one waiting with its media already fetched.
CALLS_PER_ACTOR = 2


def connect(address: str):
    """The `ray` module, connected to `address`; `OptionError` if Ray is missing or unreachable.
    Returns (ray, whether this call started Ray, so that it should shut it down)."""
    try:
        import ray
    except ImportError:
        raise OptionError("--ray needs Ray: pip install 'qvl[cluster]'") from None
    if ray.is_initialized():
        return ray, False
    import logging

    try:
        if address == "local":
            ray.init(include_dashboard=False, logging_level=logging.WARNING)
        else:
            ray.init(address=address, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise OptionError(f"--ray {address}: cannot connect ({str(exc).splitlines()[0]})") from None
    return ray, True


def model_count(ray, models: int | None, device: str) -> tuple[int, bool]:
    """(actors, whether each takes a GPU): --gpus if given, else every GPU of the cluster (one
    actor on a CPU where it has none, or with --device cpu)."""
    gpus = 0 if device == "cpu" else int(ray.cluster_resources().get("GPU", 0))
    if device == "cuda" and not gpus:
        raise OptionError("--device cuda: the Ray cluster has no GPUs")
    if models is None:
        return max(gpus, 1), gpus > 0
    if gpus and models > gpus:
        raise OptionError(f"--gpus {models}: the Ray cluster has {counted(gpus, 'GPU')}")
    return models, gpus > 0


class ModelActor:
    """One model (on one GPU where the cluster has them), answering rows whose media is loaded."""

    def __init__(self, settings):
        self.runner = Runner(settings, WorkerView())

    def load(self) -> dict[str, Any] | str:
        """The engine's description, or the message of why it cannot load."""
        try:
            return engine_info(self.runner.engine())
        except QvlError as exc:
            return str(exc)

    def answer(self, row, media) -> dict[str, Any]:
        video = getattr(media, "video", None)
        if video is not None and not video.frames.flags.writeable:
            video.frames = video.frames.copy()  # the object store's arrays are read-only; torch wants its own
        return answer(self.runner, row, media)


def decode(row, cache) -> Any:
    """A CPU task: the row's media (or the error that stopped it), through the node's frame cache."""
    return ready(row, cache.open(), workers=1)


def answer_on_ray(
    settings,
    rows: list,
    cache,
    *,
    address: str,
    models: int | None,
    prefetch: int | None,
    on_loaded: Callable[[dict], None],
) -> Iterator[dict[str, Any]]:
    """Records of `rows` as the cluster answers them (not in order). cache: `CacheSettings`;
    prefetch: rows decoded ahead of the actors (None: twice the actors, plus two)."""
    ray, started = connect(address)
    try:
        count, on_gpu = model_count(ray, models, settings.device)
        actor_class = ray.remote(ModelActor).options(
            num_gpus=1 if on_gpu else 0, num_cpus=1, max_restarts=1, max_task_retries=1
        )
        decode_task = ray.remote(decode).options(num_cpus=1)
        actors = [actor_class.remote(settings) for _ in range(count)]
        for info in ray.get([actor.load.remote() for actor in actors]):
            if isinstance(info, str):
                raise ModelError(info)
            on_loaded(info)
        yield from _schedule(ray, actors, decode_task, rows, cache, prefetch or 2 * count + 2, settings.model)
    finally:
        if started:
            ray.shutdown()


def _schedule(ray, actors: list, decode_task, rows: list, cache, prefetch: int, model) -> Iterator[dict[str, Any]]:
    """Decode up to `prefetch` rows ahead of the actors; give each actor `CALLS_PER_ACTOR` rows at
    a time; yield each record as it comes back."""
    todo = iter(rows)
    decoded: deque = deque()  # (row, media ref), in row order
    calls: dict = {}  # answer ref -> (actor, row)
    busy = {id(actor): 0 for actor in actors}

    def decode_ahead() -> None:
        while len(decoded) < prefetch:
            row = next(todo, None)
            if row is None:
                return
            decoded.append((row, decode_task.remote(row, cache)))

    decode_ahead()
    while decoded or calls:
        for actor in actors:
            while decoded and busy[id(actor)] < CALLS_PER_ACTOR:
                row, media = decoded.popleft()
                calls[actor.answer.remote(row, media)] = (actor, row)
                busy[id(actor)] += 1
        decode_ahead()
        finished, _ = ray.wait(list(calls), num_returns=1)
        actor, row = calls.pop(finished[0])
        busy[id(actor)] -= 1
        try:
            record = ray.get(finished[0])
        except ray.exceptions.RayActorError as exc:
            raise QvlError(f"a model actor stopped ({first_line(exc)}); run the same command again to resume") from None
        except ray.exceptions.RayError as exc:  # its decode task's worker died: this row fails alone
            message = f"{row.input}: {type(exc).__name__}: {first_line(exc)}"
            record = {"id": row.id, **error_record(row.input, message, model=model, prompt=row.prompt)}
        yield record
