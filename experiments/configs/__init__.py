"""Training configurations (ml_collections); each file's docstring holds the command that runs it."""
