"""The REST layer: one module per area, one error path, the OpenAPI description."""
