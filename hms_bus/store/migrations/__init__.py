"""The store's SQL migrations, applied in order of their number (``NNNN_name.sql``)."""
