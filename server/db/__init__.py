"""Storage: the port (port.py, what the domain and the API call) and its adapters
(sqlite/, the only code that knows SQL; picked by server/app.py)."""
