"""Private implementation of optlayers. Public modules re-export from here."""
