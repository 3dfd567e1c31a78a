"""The list of the `fw` group's commands, one import per area."""

ALL: list = []
