"""What a worker's metrics report carries to the main process: request counts keyed by method,
route template and status (plus the channel's rejection and drop counts)."""

HttpKey = tuple[str, str, int]  # method, route template, status
