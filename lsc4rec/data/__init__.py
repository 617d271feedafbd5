"""Datasets: readers, the prepared sequence dataset, the temporal split, partitioning and batching."""

from lsc4rec.data.dataset import SequenceDataset, build_dataset
from lsc4rec.data.partition import partition_users
from lsc4rec.data.sources import read_dataset
from lsc4rec.data.split import TemporalSplit

__all__ = ["SequenceDataset", "TemporalSplit", "build_dataset", "partition_users", "read_dataset"]
