"""Seed and evaluation data readers (Open Assistant oasst1 message schema)."""
