"""The candidate service fixture for the device tests (the federation's tiny checkpoint)."""

from tests.server.conftest import federation_checkpoint, federation_config, service, synthetic_folder

__all__ = ["federation_checkpoint", "federation_config", "service", "synthetic_folder"]
