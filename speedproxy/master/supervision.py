"""Worker supervision: spawn worker processes, respawn them with backoff, resize and stop the set.

The :class:`Supervisor` owns the worker slots (:class:`WorkerHandle`).
Each worker is a ``python -m speedproxy.worker`` process given the
listening socket, its end of the AMP control channel and the stats
segment; :class:`WorkerProcess` relays its output and reports its exit,
:class:`MasterControl` is the master's end of its channel.  A worker that
dies is respawned, at once the first time and then with an exponential
backoff until it has lived :data:`STABLE_AFTER` seconds.
"""

from __future__ import annotations

import os
import platform
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.protocol import Factory, ProcessProtocol
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

from speedproxy.accesslog import ACCESS_LOG_FD
from speedproxy.cluster.amp import AccountingRows
from speedproxy.config import Config
from speedproxy.master.access_relay import AccessLogPipe, AccessLogRelay, open_access_pipe
from speedproxy.master.affinity import pinner
from speedproxy.master.control import DropKeys, Invalidated, Ready, Shutdown
from speedproxy.master.environment import keep_freed_memory, last_level_cache, worker_environment

if TYPE_CHECKING:  # pragma: no cover
    from speedproxy.master.service import MasterService

log = Logger(namespace="speedproxy.master")
#: Lines the workers print, relayed into the master's log.
worker_log = Logger(namespace="speedproxy.worker")
access_log = Logger(namespace="speedproxy.access")



def _log_access_lines(text: str) -> None:
    access_log.info("{lines}", lines=text)


#: A worker that lived at least this long resets the respawn backoff.
STABLE_AFTER = 10.0
MAX_BACKOFF = 10.0


def worker_count(config: Config) -> int:
    """``server.workers``, with ``auto`` meaning one per CPU."""
    if config.server.workers is None:
        return os.cpu_count() or 1
    return config.server.workers


def respawn_delay(quick_exits: int) -> float:
    """Seconds before respawning a worker after ``quick_exits`` consecutive quick exits."""
    return 0.0 if quick_exits <= 1 else min(MAX_BACKOFF, 0.1 * 2 ** (quick_exits - 1))


class MasterControl(amp.AMP):
    """The master's end of one worker's control channel."""

    def __init__(self, master: "MasterService", handle: "WorkerHandle") -> None:
        super().__init__()
        self.master = master
        self.handle = handle

    def connectionMade(self) -> None:
        super().connectionMade()
        self.master.worker_connected(self.handle, self)

    @Ready.responder
    def ready(self, pid: int, slot: int, version: int) -> dict:
        self.master.worker_ready(self.handle, pid, version)
        return {}

    @AccountingRows.responder
    def accounting_rows(self, rows: bytes, dropped: int) -> dict:
        """A worker's traffic accounting counts (kept when accounting is on)."""
        if self.master.accounting is not None:
            self.master.accounting.add_json(rows, dropped)
        return {}

    @Invalidated.responder
    def invalidated(self, keys: List[bytes]) -> dict:
        """One worker invalidated keys: every worker drops them from memory."""
        for handle in self.master.workers.values():
            if handle.control is not None:
                handle.control.callRemote(DropKeys, keys=keys)
        return {}


class WorkerProcess(ProcessProtocol):
    """Relays a worker's output to the master's log and reports its exit."""

    def __init__(self, supervisor: "Supervisor", handle: "WorkerHandle") -> None:
        self.supervisor = supervisor
        self.handle = handle
        self._partial = {1: b"", 2: b""}

    def childDataReceived(self, fd: int, data: bytes) -> None:
        text = self._partial.get(fd, b"") + data  # (stdout/stderr)
        *lines, self._partial[fd] = text.split(b"\n")
        for line in lines:
            if line:
                worker_log.info(
                    "[worker {slot}] {line}", slot=self.handle.slot, line=line.decode("utf-8", "replace")
                )

    def processEnded(self, reason: Failure) -> None:
        self.supervisor.exited(self.handle, reason)


@dataclass(eq=False)
class WorkerHandle:
    """The master's record of one worker slot."""

    slot: int
    pid: int = 0
    process: Any = None
    control: Optional[MasterControl] = None
    ready: bool = False
    started: float = 0.0
    version: int = 0
    #: Consecutive quick exits, for the respawn backoff.
    quick_exits: int = 0
    retiring: bool = False
    exited: Deferred = field(default_factory=Deferred)
    respawn_call: Any = None


class Supervisor:
    """The worker processes of ``master``: one per slot, kept running until stopped.

    It reads what a worker is started with from the master when it starts
    one (the listening socket, the stats segment, ``server.cpu_affinity``),
    so a respawned worker gets the current settings.
    """

    def __init__(self, master: "MasterService") -> None:
        self.master = master
        self.reactor = master.reactor
        self.workers: Dict[int, WorkerHandle] = {}
        #: Workers respawned after dying.
        self.restarts = 0
        #: Set once the set is being stopped: exits are no longer respawned.
        self.stopping = False
        self.pypy = platform.python_implementation() == "PyPy"
        self.cache_bytes = last_level_cache() if self.pypy else None
        #: The workers' access log lines on their way to twistd's log.
        self.access_relay = AccessLogRelay(self.reactor, _log_access_lines)
        keep_freed_memory()  # the relay's batches reuse memory instead of page-faulting it in

    # -- views ------------------------------------------------------------------

    def connected(self) -> List[WorkerHandle]:
        """Workers with a control channel (also those retiring)."""
        return [handle for handle in self.workers.values() if handle.control is not None]

    def live(self) -> List[WorkerHandle]:
        """Workers with a control channel that are not retiring: those a change goes to."""
        return [handle for handle in self.workers.values() if handle.control is not None and not handle.retiring]

    def signal_all(self, signum: int) -> None:
        """Send ``signum`` to every running worker process."""
        for handle in self.workers.values():
            if handle.pid:
                try:
                    os.kill(handle.pid, signum)
                except OSError:
                    pass

    # -- start and respawn -------------------------------------------------------

    def start(self, count: int) -> None:
        """Start ``count`` workers, in slots 0 to ``count - 1``."""
        nursery = worker_environment(os.environ, self.pypy, self.cache_bytes).get("PYPY_GC_NURSERY")
        if nursery and nursery != os.environ.get("PYPY_GC_NURSERY"):
            log.info(
                "PyPy workers get PYPY_GC_NURSERY={nursery}: the CPU reports {cache} MiB of last-level "
                "cache, and half of it per worker would be mostly idle nursery (set PYPY_GC_NURSERY to choose)",
                nursery=nursery, cache=(self.cache_bytes or 0) // 2**20,
            )
        for slot in range(count):
            self.spawn(WorkerHandle(slot))

    def spawn(self, handle: WorkerHandle) -> None:
        """Start the worker process of ``handle``'s slot."""
        master = self.master
        assert master.listener is not None and master.segment is not None
        self.workers[handle.slot] = handle
        handle.ready = False
        handle.control = None
        handle.exited = Deferred()
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        access_read, access_write = open_access_pipe()
        argv = [
            sys.executable, "-m", "speedproxy.worker",
            "--listen-fd", "3", "--family", master.family,
            "--control-fd", "4", "--slot", str(handle.slot), "--stats", master._stats_path,
        ]
        try:
            process = self.reactor.spawnProcess(
                WorkerProcess(self, handle),
                sys.executable,
                argv,
                env=worker_environment(os.environ, self.pypy, self.cache_bytes),
                childFDs={
                    0: "w", 1: "r", 2: "r", 3: master.listener.fileno(), 4: child.fileno(), ACCESS_LOG_FD: access_write
                },
            )
        except BaseException:
            os.close(access_read)
            raise
        finally:
            child.close()
            os.close(access_write)
        AccessLogPipe(self.reactor, access_read, self.access_relay).start()
        handle.process = process
        handle.pid = process.pid
        pinner.pin(handle.slot, process.pid, master.config.server.cpu_affinity)  # server.cpu_affinity
        handle.started = self.reactor.seconds()
        master.segment.reset_slot(handle.slot, process.pid, int(time.time()))

        class _Factory(Factory):
            noisy = False

            def buildProtocol(self, addr: Any) -> MasterControl:
                return MasterControl(master, handle)

        self.reactor.adoptStreamConnection(parent.fileno(), socket.AF_UNIX, _Factory())
        parent.close()

    def exited(self, handle: WorkerHandle, reason: Failure) -> None:
        """``handle``'s process ended: forget it, or respawn it with backoff."""
        code = getattr(reason.value, "exitCode", None)
        sig = getattr(reason.value, "signal", None)
        handle.ready = False
        handle.control = None
        if self.master.reader is not None:
            self.master.reader.retire(handle.slot)
        exited, handle.exited = handle.exited, Deferred()
        if self.stopping or handle.retiring:
            self.workers.pop(handle.slot, None)
            log.info("worker {slot} (pid {pid}) exited", slot=handle.slot, pid=handle.pid)
            handle.pid = 0
            exited.callback(None)
            return
        lived = self.reactor.seconds() - handle.started
        handle.quick_exits = 0 if lived >= STABLE_AFTER else handle.quick_exits + 1
        delay = respawn_delay(handle.quick_exits)
        log.warn(
            "worker {slot} (pid {pid}) died (exit {code}, signal {sig}); respawning in {delay:.1f}s",
            slot=handle.slot, pid=handle.pid, code=code, sig=sig, delay=delay,
        )
        handle.pid = 0
        self.restarts += 1
        exited.callback(None)

        def respawn() -> None:
            handle.respawn_call = None
            if not self.stopping and not handle.retiring:
                self.spawn(handle)

        handle.respawn_call = self.reactor.callLater(delay, respawn)

    # -- resize and stop ---------------------------------------------------------

    def resize(self, count: int, grace: float) -> None:
        """Start or retire workers to reach ``count``; a retired one drains up to ``grace`` seconds."""
        segment = self.master.segment
        assert segment is not None
        count = min(count, segment.layout.slots)
        active = sorted(slot for slot, handle in self.workers.items() if not handle.retiring)
        for slot in range(count):
            if slot not in self.workers:
                self.spawn(WorkerHandle(slot))
        for slot in active:
            if slot >= count:
                handle = self.workers[slot]
                handle.retiring = True
                if handle.respawn_call is not None and handle.respawn_call.active():
                    handle.respawn_call.cancel()
                    self.workers.pop(slot, None)
                elif handle.control is not None:
                    handle.control.callRemote(Shutdown, grace=grace)
                elif handle.pid:
                    os.kill(handle.pid, signal.SIGTERM)

    def stop(self, grace: float) -> Deferred:
        """Drain every worker (up to ``grace`` seconds, then kill it); fires once all exited."""
        self.stopping = True
        waits = []
        for handle in list(self.workers.values()):
            if handle.respawn_call is not None and handle.respawn_call.active():
                handle.respawn_call.cancel()
            if not handle.pid:
                continue
            waits.append(handle.exited)
            if handle.control is not None:
                handle.control.callRemote(Shutdown, grace=grace)
            else:
                try:
                    os.kill(handle.pid, signal.SIGTERM)
                except OSError:
                    pass

        def kill_stragglers() -> None:
            for handle in self.workers.values():
                if handle.pid:
                    log.warn("worker {slot} did not stop in time; killing it", slot=handle.slot)
                    try:
                        os.kill(handle.pid, signal.SIGKILL)
                    except OSError:
                        pass

        timer = self.reactor.callLater(grace + 5.0, kill_stragglers)

        def stopped(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            self.access_relay.flush()
            return result

        return DeferredList(waits).addBoth(stopped)
