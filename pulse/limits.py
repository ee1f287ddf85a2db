"""The size and time limits of an event's fields, defined once.

The edge validates events against them (`pulse.validation`); queries, alert rules and
dimension slices accept no longer a field than an event can carry.
"""

MAX_ID_CHARS = 128  # campaign_id and event_id
MAX_EVENT_TYPE_CHARS = 64
MAX_DIMENSIONS = 32  # per event
MAX_DIMENSION_KEY_CHARS = 64
MAX_DIMENSION_VALUE_CHARS = 256

# Event times must fit a PostgreSQL timestamptz and a Python datetime: years 1970..9999.
MIN_TIMESTAMP_MS = 0  # 1970-01-01
MAX_TIMESTAMP_MS = 253_402_300_799_999  # the last millisecond of 9999
