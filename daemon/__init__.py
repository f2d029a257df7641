"""The supervisor side."""
