"""Content a marketer builds without writing HTML: variables, block designs, starters, media."""
