"""Stand-in for EMOCA's `gdl` package (tests only). See tests/stand_ins/README.md."""
