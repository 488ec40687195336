"""A DiffCaptioner in a process of its own, behind the same describing API.

    captioner = RemoteCaptioner.start("embedded", twin=EMBEDDED_TWIN_DIR)   # returns at once
    captioner.info                                   # waits until the child has loaded the model
    captioner.describe_batch(pairs, settings=...)    # -> [Description], as DiffCaptioner's
    for d in captioner.describe_stream(before, after): ...
    captioner.twin.describe(before, after, with_trace=False)
    call_on(captioner, explain_maps, before, after, caption, 3)   # any module-level function of a captioner
    captioner.close()

Why a process: on a CPU, a web server and a model's token-by-token decoding loop both need Python's
one interpreter lock, so in one process they take turns and every request waits for the other's
Python work. In its own process the model decodes on one core while the server answers on another.
And the child imports torch and transformers and loads the weights while the parent imports its web
framework, so starting costs the longer of the two rather than their sum. The parent never imports
torch: everything that crosses the pipe is plain data (str, numbers, numpy, PIL images) whose classes
live in torch-free modules. A function to run there (``call``) crosses as what pickle makes of it: its
module and name, which the model process imports. So the caller names the work (a library function such
as ``analysis.attribution.explain_maps``); this module names no work of any other area.
"""
from __future__ import annotations

import json
import pickle
import queue
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from multiprocessing.connection import Connection
from pathlib import Path

from m3diff.describing import Description, GenerationSettings, ModelInfo

# Exceptions from these modules are sent as they are; any other becomes a RemoteError with its text,
# so that unpickling one never imports torch (or anything else heavy) into the parent.
_PORTABLE_EXCEPTIONS = ("builtins", "m3diff.describing", "m3diff.images", "m3diff.remote")
_OPS = ("describe_batch", "describe", "describe_stream", "call")


class RemoteError(RuntimeError):
    """An error raised in the model process (its type and message), or that process ending."""


def _check_callable(fn) -> None:
    """A function the model process can import by its module and name (what pickle sends for it)."""
    module, name = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    if not callable(fn) or not module or module == "__main__" or "<" in name:
        raise ValueError(f"call needs a module-level function the model process can import, got {fn!r}")


def call_on(captioner, fn, *args, **kwargs):
    """``fn(captioner, *args, **kwargs)`` run where the captioner's model lives (this process or its own)."""
    _check_callable(fn)
    if isinstance(captioner, RemoteCaptioner):
        return captioner.call(fn, *args, **kwargs)
    return fn(captioner, *args, **kwargs)


def _portable(exc: BaseException) -> BaseException:
    if type(exc).__module__ in _PORTABLE_EXCEPTIONS:
        try:
            pickle.loads(pickle.dumps(exc))
            return exc
        except Exception:  # noqa: BLE001 — an exception that does not survive pickling is sent as text
            pass
    return RemoteError(f"{type(exc).__name__}: {exc}")


def _serve(conn, model: str | None, twin: str | None, device: str | None) -> None:
    """The child: load, say ready (with the models' facts), then answer requests one at a time."""
    try:
        from m3diff.pipeline import DiffCaptioner  # lazy: only the model's process imports torch

        captioners = {"model": DiffCaptioner.from_pretrained(model, device=device)}
        if twin:
            captioners["twin"] = DiffCaptioner.from_pretrained(twin, device=device)
        captioners["model"].use_recommended_threads()  # this process is the model's own
    except BaseException as exc:  # noqa: BLE001 — the parent raises it
        conn.send(("error", _portable(exc)))
        return
    conn.send(("ready", {name: c.info for name, c in captioners.items()}))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        except Exception as exc:  # noqa: BLE001 — read whole but not importable here (a `call` whose module is missing)
            conn.send(("error", _portable(exc)))
            continue
        if message is None:
            return
        which, op, args, kwargs = message
        try:
            if op not in _OPS or which not in captioners:
                raise ValueError(f"no {op!r} on {which!r} in the model process")
            captioner = captioners[which]
            if op == "describe_stream":
                for d in captioner.describe_stream(*args, **kwargs):
                    conn.send(("item", d))
                conn.send(("end", None))
            elif op == "call":
                conn.send(("result", args[0](captioner, *args[1:], **kwargs)))
            else:
                conn.send(("result", getattr(captioner, op)(*args, **kwargs)))
        except Exception as exc:  # noqa: BLE001 — the caller raises it; the process serves on
            conn.send(("error", _portable(exc)))


class _Link:
    """The child process and the pipe to it. One request at a time, a stream included: the lock is held
    until its last item, which is also all the child can do at once. A stream's replies are read by a
    thread of its own, so a caller that drops the stream half-way (a closed browser tab) never holds
    the lock or blocks the thread that drops it."""

    def __init__(self, process, conn, names: tuple[str, ...]):
        self.process = process
        self.conn = conn
        self.names = names  # the captioners the child loads: "model", and "twin" when asked
        self.lock = threading.Lock()
        self._infos: dict[str, ModelInfo] | None = None

    def _recv(self):
        """The next reply: (kind, payload). A reply this process cannot unpickle is ("unreadable", error):
        it was read whole, so the exchange stays in step."""
        try:
            return self.conn.recv()
        except (EOFError, OSError):
            try:
                code = self.process.wait(5)
            except subprocess.TimeoutExpired:
                code = None
            raise RemoteError(f"the model process ended (exit code {code})") from None
        except Exception as exc:  # noqa: BLE001 — unpickling a reply can raise anything
            return "unreadable", RemoteError(f"could not read the model process's reply: {type(exc).__name__}: {exc}")

    def infos(self) -> dict[str, ModelInfo]:
        if self._infos is not None:
            return self._infos
        with self.lock:
            if self._infos is None:
                kind, payload = self._recv()
                if kind == "error":
                    self.close()
                    raise payload
                self._infos = payload
            return self._infos

    def request(self, which: str, op: str, args: tuple, kwargs: dict):
        self.infos()
        with self.lock:
            self.conn.send((which, op, args, kwargs))
            kind, payload = self._recv()
        if kind in ("error", "unreadable"):
            raise payload
        return payload

    def stream(self, which: str, args: tuple, kwargs: dict) -> Iterator[Description]:
        self.infos()
        replies: queue.SimpleQueue = queue.SimpleQueue()

        def pump() -> None:  # every reply is read, whoever is still listening
            with self.lock:
                try:
                    self.conn.send((which, "describe_stream", args, kwargs))
                    while True:
                        kind, payload = self._recv()
                        replies.put((kind, payload))
                        if kind in ("end", "error"):
                            return
                except BaseException as exc:  # noqa: BLE001 — the process ended: the listener raises it
                    replies.put(("error", exc))

        threading.Thread(target=pump, name="m3diff-stream", daemon=True).start()
        while True:
            kind, payload = replies.get()
            if kind == "item":
                yield payload
            elif kind == "end":
                return
            else:
                raise payload

    def close(self, timeout: float = 5.0) -> None:
        if self.process.poll() is None:
            try:
                self.conn.send(None)
            except (OSError, ValueError):
                pass
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        self.conn.close()


class RemoteCaptioner:
    """The describing API of ``DiffCaptioner``, served by a child process (see the module's notes)."""

    def __init__(self, link: _Link, which: str = "model"):
        self._link = link
        self._which = which

    @classmethod
    def start(cls, model: str | Path | None = None, *, twin: str | Path | None = None,
              device: str | None = None) -> "RemoteCaptioner":
        """Start the child and return at once; ``info`` or the first request waits for the load (a load
        error is raised there: ``ModelLoadError`` for a model that cannot be loaded)."""
        # A fresh interpreter (not fork: that would copy the parent's threads and locks; not
        # multiprocessing's spawn: that re-runs the parent's main script) on one end of a socket pair.
        # It dies with the parent: the socket closes and its next read ends it.
        parent, child = socket.socketpair()
        spec = json.dumps({"model": None if model is None else str(model), "twin": None if twin is None else str(twin),
                           "device": device, "path": sys.path, "fd": child.fileno()})
        # -P: nothing from the working directory shadows the package; a session of its own: Ctrl-C in a
        # terminal goes to the parent alone, whose exit then ends the child
        process = subprocess.Popen([sys.executable, "-P", "-m", "m3diff.remote", spec], pass_fds=(child.fileno(),),
                                   start_new_session=True)
        child.close()
        parent = Connection(parent.detach())
        return cls(_Link(process, parent, ("model", "twin") if twin is not None else ("model",)))

    # ------------------------------------------------------------ what DiffCaptioner offers
    @property
    def info(self) -> ModelInfo:
        return self._link.infos()[self._which]

    @property
    def source(self) -> str:
        return self.info.source

    @property
    def trained(self) -> bool:
        return self.info.trained

    @property
    def uses_mdp(self) -> bool:
        return self.info.use_mdp

    @property
    def reads_changes(self) -> bool:
        return self.info.reads_changes

    @property
    def twin(self) -> "RemoteCaptioner | None":
        """The no-MDP twin loaded beside the model, if one was asked for."""
        return RemoteCaptioner(self._link, "twin") if self._which == "model" and "twin" in self._link.names else None

    def describe_batch(self, pairs: Sequence[tuple], *, instruction: str | None = None, with_trace: bool = True,
                       settings: GenerationSettings = GenerationSettings(), knockout=None) -> list[Description]:
        return self._link.request(self._which, "describe_batch", (list(pairs),),
                                  dict(instruction=instruction, with_trace=with_trace, settings=settings,
                                       knockout=knockout))

    def describe(self, before, after, *, instruction: str | None = None, with_trace: bool = True,
                 settings: GenerationSettings = GenerationSettings(), knockout=None) -> Description:
        return self._link.request(self._which, "describe", (before, after),
                                  dict(instruction=instruction, with_trace=with_trace, settings=settings,
                                       knockout=knockout))

    def describe_stream(self, before, after, *, instruction: str | None = None, with_trace: bool = True,
                        settings: GenerationSettings = GenerationSettings()) -> Iterator[Description]:
        return self._link.stream(self._which, (before, after),
                                 dict(instruction=instruction, with_trace=with_trace, settings=settings))

    def call(self, fn, *args, **kwargs):
        """``fn(captioner, *args, **kwargs)`` in the model process; ``fn`` is a module-level function (it
        crosses as its module and name) and its result must be plain data."""
        _check_callable(fn)  # a function the child cannot import fails here, before the round trip
        return self._link.request(self._which, "call", (fn, *args), kwargs)

    def close(self) -> None:
        """Stop the model process (the twin shares it)."""
        self._link.close()

    def __enter__(self) -> "RemoteCaptioner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


if __name__ == "__main__":  # the child RemoteCaptioner.start runs
    _spec = json.loads(sys.argv[1])
    sys.path[:] = _spec["path"]  # the parent's: the modules of the functions it sends (`call`) import here too
    # the module's own copy, not __main__'s: the RemoteErrors it sends must unpickle as m3diff.remote's
    from m3diff.remote import _serve as serve

    serve(Connection(_spec["fd"]), _spec["model"], _spec["twin"], _spec["device"])
