"""The OCR worker: reads nutrition labels from photos. Not built yet (docs/api.md,
"Not built yet")."""
