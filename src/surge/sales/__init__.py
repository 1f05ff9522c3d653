"""The flash sale (docs/sales.md): purchases, the catalogue, group commits, the
reconciliation of the stock gates, what every process keeps about sales, the live stock
feed. Core: it imports only the ground floor."""
