"""The face pipeline's building blocks: numpy + OpenCV, never jax (pipelines import these)."""
