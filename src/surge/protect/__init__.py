"""Protection (DESIGN section 7): rate limits, load shedding, deadlines, breakers."""
