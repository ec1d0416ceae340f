"""The admin / control API served by the master on ``admin.listen``."""
