"""Route decisions: which tier and backend answer a request, and why."""

from hybrid.routing.decision import RouteDecision
from hybrid.routing.resolver import ModelResolver

__all__ = ["ModelResolver", "RouteDecision"]
