"""The thin typer layer over the rscrisis library (DESIGN.md: parse, resolve, call, print)."""
