"""Command-line tools around the jaxswap core (OpenCV + mediapipe); the core never imports them."""
