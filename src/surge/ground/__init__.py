"""The ground floor: the data and the interfaces every layer shares.

Nothing here imports from the rest of Surge: Core (the order query, sales and purchases,
the hub, the consumers), the backends, the HTTP engine and the wiring all build on it
(docs/architecture.md; enforced by the import-linter contracts in pyproject.toml).
"""
