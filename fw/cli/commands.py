"""The list of the `fw` group's commands, one import per area."""

from fw.cli.lab import lab_group

ALL: list = [lab_group]
