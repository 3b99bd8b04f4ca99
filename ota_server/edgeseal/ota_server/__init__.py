"""edgeseal.ota_server."""
