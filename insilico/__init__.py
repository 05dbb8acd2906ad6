"""insilico package."""
