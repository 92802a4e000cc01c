"""The timeline: events, the recorder, the SQLite store."""
