"""Great Expectations suites on the manifest and the validate stage."""
