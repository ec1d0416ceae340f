"""Active health checks: probes run once per backend by the master."""

from speedproxy.health.interface import IHealthChecker
from speedproxy.health.monitor import HealthMonitor, HealthState

__all__ = ["HealthMonitor", "HealthState", "IHealthChecker"]
