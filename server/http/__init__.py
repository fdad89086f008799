"""HTTP layer: middlewares (auth, problem+json, access log, metrics), the hardened server."""
