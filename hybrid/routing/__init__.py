"""Route decisions: which tier and backend answer a request, and why."""

from hybrid.routing.decision import RouteDecision, Target
from hybrid.routing.resolver import ModelResolver
from hybrid.routing.router import Router

__all__ = ["ModelResolver", "RouteDecision", "Router", "Target"]
