"""The Glean data dictionary: app definitions (glean_parser), what the warehouse has seen,
pages and a JSON API under /dictionary, and a static build of the same pages."""
