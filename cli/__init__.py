"""The `pulse` command (`python -m cli`): one entry point for every deployable and tool."""
