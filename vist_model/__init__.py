"""vist_model package."""
