"""The HTTP face's own routes: probes, metrics, task counts and the OpenAPI document."""
