"""What the services share at run time: the per-process instance registry."""

from shared.runtime.registry import InstanceContext, InstanceRegistry

__all__ = ["InstanceContext", "InstanceRegistry"]
