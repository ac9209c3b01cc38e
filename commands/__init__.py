"""User commands that are neither a DVC stage nor a Prefect flow: `python -m commands.NAME`."""
