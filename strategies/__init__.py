"""Server-side policies of the federation: guarded SRM aggregation and the request budget.

Both wrap another Flower strategy (``flwr.serverapp.strategy.FedAvg``, ``FedProx``, ``FedAdam``...), e.g.
``RequestBudget(UpdateGuard(FedAvg(...), max_update_norm=10.0), budget=0.05)``.
"""

from strategies.budget import RequestBudget
from strategies.guards import UpdateGuard

__all__ = ["RequestBudget", "UpdateGuard"]
