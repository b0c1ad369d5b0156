"""The deterministic router: tier choice, rate limits and dead letters between submitters and workers."""
