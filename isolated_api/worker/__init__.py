"""The HTTP worker side: what runs in each HTTP child (or in this process in direct mode): the
channel and its link, the app built from the recipe, middleware, health and metrics routes, uvicorn."""
