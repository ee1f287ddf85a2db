"""Pulse: streaming analytics for ad-campaign events.

This package holds what every deployable shares: settings, the error tree, and the
pure logic (validation, window math, aggregation) that imports no I/O library.
"""
