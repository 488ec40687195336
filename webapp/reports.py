"""The reports the app shows, held once on the server in bounded memory.

The operator's reports (named at start, or the shipped ones) are shared by every visitor and kept. A
visitor's uploaded report is checked as data (``analysis.report.Report.from_json``: types, sizes,
lengths), then held once in the store under a random key; the visitor's session keeps only that key.
Uploads are bounded per session and in total: past the total, the least recently used go first, and a
visitor whose report was dropped is told so when the app next looks for it.
"""
from __future__ import annotations

import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass

from pathlib import Path

from analysis.report import LoadedReport, ReportLimits, read_report

# (name, key) per report a session shows; key None: an operator's report, shared by every session
Shown = tuple[tuple[str, str | None], ...]


@dataclass(frozen=True)
class UploadLimits:
    """How much a visitor's upload may hold, and how much all uploads together."""

    report: ReportLimits = ReportLimits(max_pairs=40_000)
    per_session: int = 4  # reports one session can add; a fifth replaces its oldest
    total_bytes: int = 400_000_000  # estimated memory of all uploads together
    # a parsed report's memory, measured (benchmarks/bench_report_memory.py, tracemalloc): ~2.5 bytes per
    # byte of its file for long captions, plus ~800 bytes per pair of objects for many short ones (a
    # 9 MB file of 40,000 one-word pairs holds 41 MB); a byte-only estimate undercounted those by 1.5x
    memory_per_byte: float = 2.5
    memory_per_pair: int = 800
    reading_at_once: int = 2  # uploads parsed together: a parse of the largest report peaks at ~80 MB

    def cost(self, file_bytes: int, pairs: int) -> int:
        """The estimated memory of a held report of ``file_bytes`` with ``pairs`` pairs."""
        return int(file_bytes * self.memory_per_byte + pairs * self.memory_per_pair)


class ReportStore:
    def __init__(self, shared: dict[str, LoadedReport], limits: UploadLimits = UploadLimits()):
        self.limits = limits
        self._shared = dict(shared)
        self._uploads: OrderedDict[str, tuple[LoadedReport, int]] = OrderedDict()
        self._dropped: set[str] = set()
        self._lock = threading.Lock()  # callbacks run in several threads
        self._reading = threading.BoundedSemaphore(limits.reading_at_once)

    @property
    def shared(self) -> dict[str, LoadedReport]:
        return dict(self._shared)

    def initial(self) -> Shown:
        """What a new session shows: the operator's reports."""
        return tuple((name, None) for name in self._shared)

    def read(self, path, search: tuple[Path, ...] = (), allowed: tuple[Path, ...] = ()) -> LoadedReport:
        """A visitor's uploaded report, read and checked (``analysis.report.read_report`` with the upload
        limits; ReportError otherwise), at most ``reading_at_once`` at a time: the others wait, so
        concurrent uploads cannot add their parsing peaks together."""
        with self._reading:
            return read_report(path, search=search, allowed=allowed, limits=self.limits.report)

    def add(self, shown: Shown, loaded: LoadedReport, file_bytes: int) -> tuple[Shown, str]:
        """A session's reports with ``loaded`` added (under its name, primed if taken), and its name.
        The session's oldest upload makes room past ``per_session``; the oldest of all past ``total_bytes``."""
        cost = self.limits.cost(file_bytes, len(loaded.report.pairs))
        key = secrets.token_hex(8)
        names = {n for n, _ in shown}
        name = loaded.name
        while name in names:
            name += "'"
        mine = [k for _, k in shown if k is not None]
        with self._lock:
            if len(mine) >= self.limits.per_session:
                self._forget(mine[0])
                shown = tuple(item for item in shown if item[1] != mine[0])
            self._uploads[key] = (loaded, cost)
            while sum(c for _, c in self._uploads.values()) > self.limits.total_bytes and len(self._uploads) > 1:
                oldest = next(iter(self._uploads))
                self._forget(oldest)
        return (*shown, (name, key)), name

    def _forget(self, key: str) -> None:
        if self._uploads.pop(key, None) is not None:
            self._dropped.add(key)

    def resolve(self, shown: Shown | None) -> tuple[dict[str, LoadedReport], list[str]]:
        """({name: report} of a session's reports, names of its uploads the store has dropped)."""
        out, dropped = {}, []
        with self._lock:
            for name, key in shown or self.initial():
                if key is None:
                    if name in self._shared:
                        out[name] = self._shared[name]
                    continue
                held = self._uploads.get(key)
                if held is None:
                    dropped.append(name)
                    continue
                self._uploads.move_to_end(key)  # recently used: kept longest
                out[name] = held[0]
        return out, dropped

    def held_bytes(self) -> int:
        """The estimated memory of the uploads held now."""
        with self._lock:
            return sum(c for _, c in self._uploads.values())
