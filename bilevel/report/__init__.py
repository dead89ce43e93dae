"""Stage 7, the report: data, figures, rendering."""
