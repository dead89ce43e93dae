"""Pieces shared by the command-line programs."""
