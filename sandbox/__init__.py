"""From validated request and effective policy to a confined running process."""
