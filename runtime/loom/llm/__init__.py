"""Model providers behind one interface, with typed errors, retries, a circuit breaker and metrics."""
