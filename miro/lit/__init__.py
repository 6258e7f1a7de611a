"""Lightning glue: the training module, EMA and callbacks."""
