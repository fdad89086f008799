"""Background jobs: the worker pool, batch validation/commit and parsing an upload as a job."""
