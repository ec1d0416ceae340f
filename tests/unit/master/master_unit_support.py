"""A master with two fake workers, for the unit tests of the master's parts."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, List, Tuple

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from speedproxy.config import parse_config
from speedproxy.master.service import MasterService
from speedproxy.master.supervision import WorkerHandle

CONFIG = """\
server: {workers: 2}
backends:
  default:
    - {id: a, host: 10.0.0.1, port: 80}
routing:
  default: {path: /, upstream: default}
"""


class FakeControl:
    """Records callRemote calls; the test fires their Deferreds."""

    def __init__(self) -> None:
        self.calls: List[Tuple[Any, dict, Deferred]] = []

    def callRemote(self, command: Any, **arguments: Any) -> Deferred:
        deferred: Deferred = Deferred()
        self.calls.append((command, arguments, deferred))
        return deferred

    def pending(self, command: Any) -> List[Tuple[dict, Deferred]]:
        return [(a, d) for c, a, d in self.calls if c is command and not d.called]


def two_worker_master(config: str = CONFIG) -> MasterService:
    """A master on a :class:`Clock` whose workers 0 and 1 are ready, with a :class:`FakeControl` each."""
    service = MasterService(Clock(), parse_config(config), None)
    service.segment = SimpleNamespace(layout=SimpleNamespace(slots=16, routes=64, backends=256, upstreams=256))  # type: ignore[assignment]
    for slot in (0, 1):
        handle = WorkerHandle(slot, pid=100 + slot, control=FakeControl(), ready=True)  # type: ignore[arg-type]
        service.workers[slot] = handle
    return service


def control_of(master: MasterService, slot: int) -> FakeControl:
    return master.workers[slot].control  # type: ignore[return-value]
