"""`python run.py bench`. Serving never imports it: run.py loads it for `bench` only."""
