"""Training of every trainable part, each recording how it was made."""
