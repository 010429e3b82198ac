"""The ODCS data contracts a site's exports are validated against (YAML, shipped as package data)."""
