"""Client-side components."""
