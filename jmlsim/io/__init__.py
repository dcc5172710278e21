"""File input/output at the borders of the program (unit conversion happens here)."""
