"""Data: the embedded shapes world, WebDataset shard I/O, reward bins and the Lightning DataModule."""
