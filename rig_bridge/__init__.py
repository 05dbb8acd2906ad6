"""rig_bridge package."""
