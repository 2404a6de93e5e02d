"""Bundled training configs (one YAML per method), shipped as package data."""
