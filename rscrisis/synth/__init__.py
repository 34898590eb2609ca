"""The synthetic sample data (``scenes``): generated scenes and footprints for the quickstart,
the tests and CI."""
