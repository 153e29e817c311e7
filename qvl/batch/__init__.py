"""`qvl batch`: thousands of images and videos answered into one results file, resumably.

    rows = inputs.expand(["clips/", "todo.jsonl"], video_options, prompts=..., out="results.jsonl")
    exit_code = run(rows, settings, BatchOptions(out="results.jsonl"), view)

One record per row (the `--json` record of `describe`/`video` with the row's `id` first) is
appended to the results file as it is answered; a row already there is skipped, so running the
same command again after a crash or a kill finishes the job and answers each row exactly once.
Rows run on one model here (`local.answer_rows`), one model per GPU in worker processes
(`local.answer_on_gpus`) or on a Ray cluster (`cluster.answer_on_ray`); in every case this
process alone writes the file. Nothing here prints: the `BatchView` hears what happens.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Iterator

from qvl.batch.results import Results
from qvl.errors import OptionError
from qvl.option_groups import CacheSettings

MAX_DEFAULT_WORKERS = 4

__all__ = ["BatchOptions", "BatchView", "CacheSettings", "run"]


@dataclass(frozen=True)
class BatchOptions:
    """How a batch runs. out: the results file; retry_failed: run rows whose record is an error
    again; gpus: models, one per GPU (None: one here, every GPU of a Ray cluster); workers: CPU
    threads loading media (None: one per core, at most 4); prefetch: rows held ready ahead of the
    model (None: twice the workers, at least twice a `batch_size` given); ray: a Ray address, or
    None to run here; batch_size: ready rows decoded together (`Engine.generate_batch`), 1 for one
    at a time (None: `local.rows_together` decides for the loaded engine, where the settings allow
    decoding together, else 1)."""

    out: str
    retry_failed: bool = False
    gpus: int | None = None
    workers: int | None = None
    prefetch: int | None = None
    ray: str | None = None
    cache: CacheSettings = field(default_factory=CacheSettings)
    batch_size: int | None = None

    def __post_init__(self) -> None:
        options = (("--gpus", self.gpus), ("--workers", self.workers), ("--prefetch", self.prefetch))
        for name, value in (*options, ("--batch-size", self.batch_size)):
            if value is not None and value < 1:
                raise OptionError(f"{name} must be at least 1, not {value}")

    @property
    def cpu_workers(self) -> int:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return self.workers or min(cores, MAX_DEFAULT_WORKERS)

    @property
    def ahead(self) -> int:
        return self.prefetch or 2 * max(self.cpu_workers, self.batch_size or 1)


class BatchView:
    """What a batch tells whoever watches it; this one shows nothing (`qvl.batch_view.ProgressView` does)."""

    def loaded(self, info: dict[str, Any]) -> None:
        """A model has loaded: `info` has name, device, load_s, is_tiny."""

    def started(self, total: int, done: int, out: str) -> None:
        """`total` rows are about to run; `done` were already in the results file `out`."""

    def answered(self, record: dict[str, Any]) -> None:
        """One row's record, just written (its `error` is None or the message)."""

    def finished(self, answered: int, failed: int, total: int) -> None:
        """The job's rows: `answered` and `failed` of `total`, this run and earlier ones together."""

    def warned(self, message: str) -> None:
        """Something the person should know that stops nothing (rows kept that another model answered)."""


def check(settings, options: BatchOptions, rows: list = ()) -> None:
    """`OptionError` (or `CacheDirError`: a frame cache the `rows`' videos cannot use) for what can
    be refused before the results file is touched or a model loads."""
    if options.ray is None:  # on Ray, the nodes open their own frame caches
        cache = options.cache.open() if any(row.kind == "video" for row in rows) else None
        if cache is not None:
            cache.check_writable()
        from qvl.batch.local import check_gpus

        check_gpus(options.gpus or 1, settings.device)
    refused = _rules_out_together(settings, options)
    if refused and options.batch_size is not None and options.batch_size > 1:
        raise OptionError(
            f"--batch-size {options.batch_size} decodes answers together, greedily, without PSA and "
            f"off Ray: drop {refused} or --batch-size"
        )


def _rules_out_together(settings, options: BatchOptions) -> str | None:
    """The option that rules out decoding rows together (greedy only, no PSA, not on Ray), or None."""
    refused = [
        ("--temperature", settings.temperature and settings.temperature > 0),
        ("--psa", settings.psa is not None),
        ("--ray", options.ray is not None),
    ]
    return next((name for name, given in refused if given), None)


def _batch_size(settings, options: BatchOptions) -> int | None:
    """Rows decoded together: the option, 1 where the settings rule it out, None to let the model's device decide."""
    return 1 if _rules_out_together(settings, options) else options.batch_size


def run(rows: list, settings, options: BatchOptions, view: BatchView | None = None) -> int:
    """Answer the rows the results file lacks; the exit code: 0 if every row of the job is
    answered, 1 if any row's record is an error (this run's or an earlier one's)."""
    view = view or BatchView()
    check(settings, options, rows)
    with Results.open(options.out) as results:
        if options.retry_failed:
            results.drop(row.id for row in rows if results.errors.get(row.id) is not None)
        todo = [row for row in rows if row.id not in results.errors]
        view.started(len(todo), len(rows) - len(todo), str(results.path))
        kept = _asked_otherwise([row for row in rows if row.id in results.errors], results, settings)
        if kept:
            view.warned(kept)
        if todo:
            for record in _records(todo, settings, options, view):
                results.append(record)
                view.answered(record)
        failed = sum(results.errors.get(row.id) is not None for row in rows)
    view.finished(len(rows) - failed, failed, len(rows))
    return 1 if failed else 0


def _asked_otherwise(kept: list, results: Results, settings) -> str | None:
    """What to tell where rows kept from the results file were answered by another model or about
    another prompt than this run would ask: they are not asked again (their ids are done)."""
    from qvl.errors import counted
    from qvl.models import default_model_spec

    model = (settings.model or default_model_spec()).strip()  # as records name it: the model as given
    others, other_prompt, differ = set(), False, 0
    for row in kept:
        by, about = results.asked.get(row.id, (None, None))
        by_other = by is not None and by != model
        about_other = about is not None and about != row.prompt
        if by_other or about_other:
            differ += 1
            if by_other:
                others.add(str(by))
            other_prompt = other_prompt or about_other
    if not differ:
        return None
    how = " or ".join(
        ([f"by {', '.join(sorted(others))}"] if others else []) + (["about another prompt"] if other_prompt else [])
    )
    return (
        f"{counted(differ, 'row')} in {results.path} {'was' if differ == 1 else 'were'} answered {how}, and "
        f"{'is' if differ == 1 else 'are'} kept; another --out asks again with these options"
    )


def _records(rows: list, settings, options: BatchOptions, view: BatchView) -> Iterator[dict[str, Any]]:
    if options.ray is not None:
        from qvl.batch.cluster import answer_on_ray

        return answer_on_ray(
            settings,
            rows,
            options.cache,
            address=options.ray,
            models=options.gpus,
            prefetch=options.prefetch,
            on_loaded=view.loaded,
        )
    here = {"workers": options.cpu_workers, "prefetch": options.ahead, "batch_size": _batch_size(settings, options)}
    if (options.gpus or 1) > 1:
        from qvl.batch.local import answer_on_gpus

        return answer_on_gpus(settings, rows, options.cache, gpus=options.gpus, on_loaded=view.loaded, **here)
    from qvl.batch.local import answer_rows
    from qvl.batch.work import engine_info
    from qvl.runner import Runner, View

    class Loaded(View):
        def loaded(self, engine) -> None:
            view.loaded(engine_info(engine))

    return answer_rows(Runner(settings, Loaded()), rows, options.cache.open(), **here)
