"""twistd plugin for speedproxy.

Kept deliberately thin: importing it must not import the reactor or read any
file, because Debian regenerates the plugin cache as root at install time.
Options and ``makeService`` live in :mod:`speedproxy.tap`.
"""

from twisted.application.service import ServiceMaker

speedproxy = ServiceMaker(
    "speedproxy",
    "speedproxy.tap",
    "High-performance reverse proxy, load balancer and HTTP cache.",
    "speedproxy",
)
