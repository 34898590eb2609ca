"""The thin typer layer over the rscrisis library (docs/design.md: parse, resolve, call, print)."""
