"""Server-side policies of the federation: guarded SRM aggregation, item-weighted rows, the request budget.

Each wraps another Flower strategy (``flwr.serverapp.strategy.FedAvg``, ``FedProx``, ``FedAdam``...), e.g.
``RequestBudget(UpdateGuard(FedAvg(...), max_update_norm=10.0), budget=0.05)``; ``server/app.py`` shows the
whole wiring (an ``ItemWeighting`` inside the guard needs ``extra_records=(records.ITEM_COUNTS,)``).
"""

from strategies.budget import RequestBudget
from strategies.guards import UpdateGuard
from strategies.item_rows import ItemWeighting

__all__ = ["ItemWeighting", "RequestBudget", "UpdateGuard"]
