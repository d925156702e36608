"""Training recipes: one module per task, ``train(config_dict, args) -> int``."""
