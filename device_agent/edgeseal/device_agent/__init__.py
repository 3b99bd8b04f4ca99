"""edgeseal.device_agent."""
