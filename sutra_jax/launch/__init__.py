"""Launchers of multi-process jobs."""
