"""Hydra/OmegaConf configs (a package so that Hydra can find them after `pip install`)."""
