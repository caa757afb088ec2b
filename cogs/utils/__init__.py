"""Helpers of the cogs: checks, texts, reports, the submit path and the result buttons (no extensions here)."""
