"""Exchange adapters: observations, reconciliation, sync and the ccxt client."""
