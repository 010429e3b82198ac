"""The ODCS data contracts a site's exports are validated against (YAML, package data)."""
