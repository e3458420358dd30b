"""The OCR worker: reads nutrition labels from photos (docs/ocr.md). So far its label
parser (label_parser.py); the worker process itself is not built yet (docs/api.md,
"Not built yet")."""
