"""Batching of concurrent describes: callers that arrive together share one ``describe_batch``.

Model serving, beside the pipeline: the app's ``/describe`` endpoint uses it, and so can any server
that takes pairs from several clients at once.
"""
from __future__ import annotations

import threading

from m3diff.describing import Description, GenerationSettings


class PairBatcher:
    """Runs concurrent ``describe`` calls as one batch (``describe_batch`` of a DiffCaptioner or RemoteCaptioner).

    Each caller validates its own images first (so a bad upload is that caller's error only), then
    queues its pair. Whichever caller holds the run lock describes every queued pair with the same
    settings, up to ``max_batch``, in one generate; the others find their results ready. On a CPU a batch
    of 4 costs far less than 4 single calls, so 4 clients at once wait about one call, not four.
    No thread of its own; the only state is the queue, guarded by a lock.
    """

    def __init__(self, captioner, max_batch: int = 4):
        self.captioner = captioner
        self.max_batch = max_batch
        self._queue: list[dict] = []
        self._queue_lock = threading.Lock()
        self._run_lock = threading.Lock()

    def describe(self, before, after, settings: GenerationSettings) -> Description:
        item = {"pair": (before, after), "settings": settings, "done": threading.Event(), "result": None,
                "error": None}
        with self._queue_lock:
            self._queue.append(item)
        with self._run_lock:
            if not item["done"].is_set():
                with self._queue_lock:
                    batch = [item] + [q for q in self._queue if q is not item and q["settings"] == settings]
                    batch = batch[: self.max_batch]
                    for q in batch:
                        self._queue.remove(q)
                try:
                    results = self.captioner.describe_batch([q["pair"] for q in batch], settings=settings)
                    for q, r in zip(batch, results):
                        q["result"] = r
                except Exception as exc:  # noqa: BLE001 — handed to every caller of the failed batch
                    for q in batch:
                        q["error"] = exc
                for q in batch:
                    q["done"].set()
        item["done"].wait()
        if item["error"] is not None:
            raise item["error"]
        return item["result"]
