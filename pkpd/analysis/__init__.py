"""Analysis: exposure metrics, PTA, side-effect risk, regimen comparison and design."""
