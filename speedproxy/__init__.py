"""speedproxy: a high-performance reverse proxy, load balancer and HTTP cache on Twisted."""

__version__ = "0.1.0"
