"""Built-in liveness and readiness routes, and the same facts from the main process."""
