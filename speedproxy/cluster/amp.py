"""The worker → master command carrying traffic accounting counts."""

from __future__ import annotations

from typing import Any, List

from twisted.protocols import amp

#: Largest JSON payload of one :class:`AccountingRows` (an AMP value holds at most 65535 bytes).
MAX_PAYLOAD = 60000


class AccountingRows(amp.Command):
    """Worker → master: counts since the last report, as a JSON list of rows
    (``route``, ``session``, ``url_key``, ``api_key``, ``requests``,
    ``bytes_in``, ``bytes_out``); ``dropped``: rows this worker could not keep."""

    arguments = [(b"rows", amp.String()), (b"dropped", amp.Integer())]
    response: List[Any] = []
    requiresAnswer = False
