"""Closing the loop: protocols, the resumable runner, reports and `insilico demo`."""
