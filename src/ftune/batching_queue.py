"""Micro-batching: requests that arrive together share one forward pass.

One worker takes the first waiting request, waits at most `max_wait_s` for company, takes
everything else already waiting (up to `max_batch` texts) and runs the model once in a single
background thread. A bounded number of waiting texts: beyond it, `Overloaded` (the service's 503).
When a shared forward pass fails, each of its requests is run again on its own, so a request that breaks
the model (or a bug triggered by one text) fails alone.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable


class Overloaded(Exception):
    """More texts are waiting than the queue allows."""


@dataclass
class _Job:
    texts: list[str]
    done: asyncio.Future = field(repr=False)


class MicroBatcher:
    def __init__(self, predict: Callable[[list[str]], list], max_batch: int = 64, max_wait_s: float = 0.005,
                 max_waiting: int = 1024, enabled: bool = True):
        self.predict, self.max_batch, self.max_wait_s = predict, max_batch, max_wait_s
        self.max_waiting, self.enabled = max_waiting, enabled
        self.waiting = 0  # texts queued or in the running batch
        self._queued = 0  # texts queued, not yet taken into a batch
        self.batches = 0
        self._queue: asyncio.Queue[_Job] = asyncio.Queue()
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ftune-model")
        self._worker: asyncio.Task | None = None

    async def submit(self, texts: list[str]) -> list:
        if self.waiting + len(texts) > self.max_waiting:
            raise Overloaded(f"{self.waiting} texts are already waiting (limit {self.max_waiting})")
        job = _Job(texts, asyncio.get_running_loop().create_future())
        self.waiting += len(texts)
        self._queued += len(texts)
        self._queue.put_nowait(job)
        return await job.done

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        self._thread.shutdown(wait=True)

    async def _run(self) -> None:
        while True:
            taken = await self._collect()
            try:
                await self._answer(taken)
            finally:
                self.waiting -= sum(len(job.texts) for job in taken)
                self.batches += 1

    async def _answer(self, jobs: list[_Job]) -> None:
        jobs = [job for job in jobs if not job.done.done()]  # callers that timed out or left: skip their texts
        texts = [text for job in jobs for text in job.texts]
        if not texts:
            return
        try:
            results = await asyncio.get_running_loop().run_in_executor(self._thread, self.predict, texts)
        except Exception as error:
            if len(jobs) > 1:  # one bad request must not fail the others: each on its own, only the culprit hears it
                for job in jobs:
                    await self._answer([job])
            elif not jobs[0].done.done():
                jobs[0].done.set_exception(error)
            return
        start = 0
        for job in jobs:
            if not job.done.done():  # a caller that went away has a cancelled future
                job.done.set_result(results[start:start + len(job.texts)])
            start += len(job.texts)

    async def _collect(self) -> list[_Job]:
        jobs = [await self._queue.get()]
        if self.enabled:
            if self._queued < self.max_batch:
                await asyncio.sleep(self.max_wait_s)  # a moment for concurrent requests to arrive
            size = len(jobs[0].texts)
            while size < self.max_batch and not self._queue.empty():
                jobs.append(self._queue.get_nowait())
                size += len(jobs[-1].texts)
        self._queued -= sum(len(job.texts) for job in jobs)
        return jobs
