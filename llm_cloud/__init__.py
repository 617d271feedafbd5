"""The cloud: an item-token causal LM, its training on the cloud view, and the candidate service."""
