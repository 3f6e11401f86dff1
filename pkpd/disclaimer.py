"""The notice every result carries (base module: the running, output and face layers use it)."""

DISCLAIMER = (
    "Research software for pharmacology and protocol design; not a clinical dosing "
    "device. Do not use it to dose patients."
)
