"""Maintainer scripts (not part of the installed course library)."""
