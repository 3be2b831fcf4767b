"""One converter per dataset: raw source files → samples at the papers' preprocessing."""
