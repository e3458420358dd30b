"""The OCR worker (contract section 7). Not built yet: see the issue tracker."""
