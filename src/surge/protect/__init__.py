"""Protection (docs/protection.md): rate limits, load shedding, deadlines."""
