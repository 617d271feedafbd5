"""LSC4Rec shared core: what the cloud and the devices agree on (data, metrics, ranking, wire schema)."""

__version__ = "0.1.0"
