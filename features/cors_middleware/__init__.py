"""CORS: a validated policy applied with Starlette's CORSMiddleware."""
