"""Datasets (TFDS, in `datasets` only), the step-indexed loader, and synthetic identities."""
