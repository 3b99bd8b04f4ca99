"""edgeseal.hardware."""
