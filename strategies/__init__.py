"""Server-side policies of the federation: guarded SRM aggregation, item-weighted rows, the request budget.

Each wraps another Flower strategy (``flwr.serverapp.strategy.FedAvg``, ``FedProx``, ``FedAdam``...), e.g.
``RequestBudget(UpdateGuard(ItemWeighting(FedAvg(...)), max_update_norm=10.0), budget=0.05)``.
"""

from strategies.budget import RequestBudget
from strategies.guards import UpdateGuard
from strategies.item_rows import ItemWeighting

__all__ = ["ItemWeighting", "RequestBudget", "UpdateGuard"]
