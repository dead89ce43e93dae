"""Studies of the reference study's theory with the exact engine, one module per study."""
