"""Web: the notification endpoint, the status data and the metrics, on the store."""
