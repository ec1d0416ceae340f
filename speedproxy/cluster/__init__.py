"""The fleet: several speedproxy nodes sharing one Redis (``cluster.redis``).

The link to Redis (``link``: reconnects, Sentinel) and its address
(``address``), the heartbeat and node list (``nodes``), cache purges and
clears published to every node (``purge_bus``), this node's place in the
fleet (``node``), the Redis-backed edge state for limits and sessions
(``store``), and traffic accounting (``ledger``, ``accounting``, ``amp``).
"""
