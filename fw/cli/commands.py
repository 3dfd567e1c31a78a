"""The list of the `fw` group's commands, one import per area."""

from fw.cli.daemon import COMMANDS as DAEMON_COMMANDS
from fw.cli.events import events_command
from fw.cli.lab import lab_group
from fw.cli.lb import lb_group
from fw.cli.policy import policy
from fw.cli.replay import replay_command
from fw.cli.store import register as register_store_commands
from fw.cli.top import top_command

ALL: list = [lab_group, policy, replay_command, events_command, top_command, *DAEMON_COMMANDS, lb_group]
REGISTER = [register_store_commands]  # add subcommands to the groups above (fw policy load, ...)
