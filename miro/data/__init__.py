"""Data: WebDataset shard I/O, the shard stages, reward bins and the Lightning DataModule."""
