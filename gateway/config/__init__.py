"""Configuration: TOML parsed once into frozen, typed dataclasses."""
