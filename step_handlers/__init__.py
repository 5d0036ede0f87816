"""The reference application of hms-bus: the HMS grant approval workflow."""
