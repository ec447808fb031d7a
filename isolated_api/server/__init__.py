"""Where the sides are joined: ServerBuilder, Server (direct and subprocess modes), ServerPlugin."""
