"""edgeseal.sdk."""
