"""Small sequential recommenders (SRMs): SASRec, GRU4Rec and DIN behind one interface.

See ``clients.srm.base`` for the shared conventions (1-based item ids, 0 = padding, left-padded histories).
"""

from clients.srm.base import ITEM_ROWS, SequentialRecommender, SRMConfig
from clients.srm.din import DIN
from clients.srm.gru4rec import GRU4Rec
from clients.srm.sasrec import SASRec

__all__ = ["DIN", "ITEM_ROWS", "GRU4Rec", "SASRec", "SRMConfig", "SequentialRecommender", "build_srm"]

_MODELS: dict[str, type[SequentialRecommender]] = {"sasrec": SASRec, "gru4rec": GRU4Rec, "din": DIN}


def build_srm(config: SRMConfig, num_items: int) -> SequentialRecommender:
    """Build the model named by ``config.model`` for a catalogue of items ``1..num_items``."""
    return _MODELS[config.model](config, num_items)
