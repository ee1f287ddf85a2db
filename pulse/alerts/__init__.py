"""Alert rules over closed windows: configuration, evaluation, deduplication."""
