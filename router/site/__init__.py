"""The site layer: a site directory, its config, link files, tokens and grants."""
