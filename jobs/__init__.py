"""Ray job entrypoints: ``python -m jobs.<name> --config CONFIG`` (what ``discover submit`` runs)."""
