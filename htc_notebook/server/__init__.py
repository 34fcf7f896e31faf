"""Jupyter server extension: REST API over runtime + ledger. Calls runtime only."""
