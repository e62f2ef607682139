"""One module per CLI stage; each exposes a ``run_*`` function the CLI and the quickstart call."""
