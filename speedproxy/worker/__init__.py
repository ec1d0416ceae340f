"""A worker: one reactor serving the proxy data path on listening sockets."""

from speedproxy.worker.service import ProxyWorkerService

__all__ = ["ProxyWorkerService"]
