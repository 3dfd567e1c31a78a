"""The screen of `fw top` (textual): what fw.topdata.TopModel computed, laid out for 80x24 and up.

The App owns no numbers: each refresh runs `model.poll()` in a thread (the control socket blocks)
and then redraws the widgets from the model on the App's thread. Tables keep the highlighted
session across refreshes by its flow id. The kill question is a modal screen: y kills, anything
else cancels.
"""

from __future__ import annotations

from rich.text import Text
from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Footer, Input, Label, Sparkline, Static

from fw.topdata import SessionRow, TopModel, rate_text, virtual_server_text

# Widths include the gap to the next column (cell_padding 0): 79 columns and the scroll bar.
SESSION_COLUMNS = (("PROTO", 6), ("SOURCE", 21), ("DESTINATION", 19), ("STATE", 12), ("B/S", 6), ("BYTES", 6),
                   ("RULE", 9))
RULE_COLUMNS = (("RULE", 24), ("PKTS/S", 9), ("BYTES/S", 9), ("PACKETS", 10), ("SESSIONS", 9))


class ConfirmKill(ModalScreen[bool]):
    """`Kill SESSION? [y/N]`: dismissed with True on y."""

    BINDINGS = [Binding("y", "answer(True)", "yes"), Binding("n,escape", "answer(False)", "no")]
    DEFAULT_CSS = """
    ConfirmKill { align: center middle; }
    ConfirmKill > Static { width: 70; height: auto; border: heavy $error; padding: 0 1; background: $panel; }
    """

    def __init__(self, row: SessionRow):
        super().__init__()
        self.row = row

    def compose(self) -> ComposeResult:
        row = self.row
        yield Static(f"Kill {row.proto} {row.src} -> {row.dst} {row.state} (rule {row.rule})?\n"
                     "[b]y[/b] kill it, [b]n[/b] keep it", id="question")

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)

    def on_key(self, event) -> None:
        if event.key not in ("y", "n", "escape"):
            self.dismiss(False)


class TopApp(App):
    """The live view. `model` is a polled fw.topdata.TopModel; `interval` seconds between polls."""

    TITLE = "fw top"
    ENABLE_COMMAND_PALETTE = False
    CSS = """
    Screen { layout: vertical; }
    #header { height: 1; background: $primary-background; }
    .spark-row { height: 1; }
    .spark-row Label { width: 18; }
    .spark-row Sparkline { width: 1fr; }
    #reasons, #fill, #virtual { height: 1; }
    #virtual { display: none; }
    .title { height: 1; text-style: bold; }
    #rules { height: 6; }
    #sessions { height: 1fr; }
    #filter { display: none; height: 1; border: none; padding: 0; }
    #filter.shown { display: block; }
    DataTable { scrollbar-size: 1 1; }
    """
    BINDINGS = [
        Binding("q", "quit", "quit"),
        Binding("ctrl+c", "quit", "quit", show=False, priority=True),
        Binding("s", "sort", "sort"),
        Binding("slash", "filter", "filter"),
        Binding("k", "kill", "kill"),
        Binding("p", "pause", "pause"),
    ]

    def __init__(self, model: TopModel, interval: float = 1.0):
        super().__init__()
        self.model = model
        self.interval = interval
        self.paused = False

    def compose(self) -> ComposeResult:
        yield Static(id="header")
        with Vertical():
            with Horizontal(classes="spark-row"):
                yield Label(id="packets-label")
                yield Sparkline(list(self.model.packets_history), id="packets")
            with Horizontal(classes="spark-row"):
                yield Label(id="drops-label")
                yield Sparkline(list(self.model.drops_history), id="drops")
            yield Static(id="reasons")
            yield Static(id="fill")
            yield Static(id="virtual")
            yield Static(id="rules-title", classes="title")
            yield DataTable(id="rules", cursor_type="none", cell_padding=0)
            yield Static(id="sessions-title", classes="title")
            yield DataTable(id="sessions", cursor_type="row", cell_padding=0)
            yield Input(placeholder="filter: words to find (ftp) or KEY=VALUE (dport=21); Enter applies, empty clears",
                        id="filter")
        yield Footer()

    def on_mount(self) -> None:
        for table_id, columns in (("#rules", RULE_COLUMNS), ("#sessions", SESSION_COLUMNS)):
            table = self.query_one(table_id, DataTable)
            for label, width in columns:
                table.add_column(label, width=width, key=label)
        self.draw()
        self.query_one("#sessions", DataTable).focus()
        self.set_interval(self.interval, self.refresh_data)

    # -- refreshing ---------------------------------------------------------------------------------

    def refresh_data(self) -> None:
        if not self.paused:
            self.poll()

    @work(thread=True, exclusive=True, group="poll")
    def poll(self) -> None:
        self.model.poll()
        self.call_from_thread(self.draw)

    def draw(self) -> None:
        model, view = self.model, self.model.view
        header = view.header if not view.error else f"[daemon unreachable: {view.error}]"
        self.query_one("#header", Static).update(Text(header + ("  [paused]" if self.paused else ""),
                                                      no_wrap=True, overflow="ellipsis"))
        self.query_one("#packets-label", Label).update(f"packets/s {rate_text(view.packets_rate):>7}")
        self.query_one("#drops-label", Label).update(f"drops/s   {rate_text(view.drops_rate):>7}")
        self.query_one("#packets", Sparkline).data = list(model.packets_history)
        self.query_one("#drops", Sparkline).data = list(model.drops_history)
        reasons = ", ".join(f"{reason} {rate_text(now)} (max {rate_text(peak)})"
                            for reason, now, peak in model.reasons())
        self.query_one("#reasons", Static).update(Text("drops/s by reason (2 min max): " + (reasons or "none"),
                                                       no_wrap=True, overflow="ellipsis"))
        self.query_one("#fill", Static).update(self.fill_text())
        virtual = self.query_one("#virtual", Static)
        virtual.display = bool(view.virtual_servers)
        if view.virtual_servers:
            virtual.update(Text("virtual servers: " + virtual_server_text(view.virtual_servers), no_wrap=True,
                                overflow="ellipsis"))
        self.draw_rules()
        self.draw_sessions()

    def fill_text(self) -> Text:
        view = self.model.view
        limit = view.sessions_limit
        fill = f"{view.sessions_active} of {limit} ({100 * view.sessions_active / limit:.1f}%)" if limit else \
            str(view.sessions_active)
        blocked = view.overload.get("blocked", 0)
        overload = "none blocked" if not blocked else f"{blocked} sources blocked: " + ", ".join(
            s["src"] for s in view.overload.get("sources", ()))
        text = Text(f"table {fill}   overload: ", no_wrap=True, overflow="ellipsis")
        text.append(overload, style="bold red" if blocked else "green")
        if view.queues:
            text.append(f"   {view.queues}")
        return text

    def draw_rules(self) -> None:
        table = self.query_one("#rules", DataTable)
        table.clear()
        for name, packets_rate, bytes_rate, packets, sessions in self.model.view.rules:
            table.add_row(name, rate_text(packets_rate), rate_text(bytes_rate), str(packets), str(sessions),
                          key=name)
        self.query_one("#rules-title", Static).update(f"rules ({len(self.model.view.rules)}), busiest first")

    def draw_sessions(self) -> None:
        model = self.model
        table = self.query_one("#sessions", DataTable)
        keep = self.highlighted()
        rows = model.rows()
        table.clear()
        for row in rows:
            table.add_row(row.proto, row.src, row.dst, row.state, rate_text(row.bytes_rate), rate_text(row.bytes),
                          row.rule, key=str(row.id))
        if keep is not None:
            for index, row in enumerate(rows):
                if row.id == keep.id:
                    table.move_cursor(row=index, animate=False)
                    break
        shown = f"{len(rows)} of {model.total_sessions}"
        title = f"sessions {shown}, sort {model.sort} (s)"
        if model.filter_text:
            title += f", filter '{model.filter_text}' (/)"
        self.query_one("#sessions-title", Static).update(title)

    def highlighted(self) -> SessionRow | None:
        table = self.query_one("#sessions", DataTable)
        if table.row_count == 0:
            return None
        try:
            key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        except Exception:  # noqa: BLE001  (no such row: the table was just cleared)
            return None
        return next((row for row in self.model.sessions if str(row.id) == key), None)

    # -- keys ---------------------------------------------------------------------------------------

    def action_sort(self) -> None:
        self.model.next_sort()
        self.draw_sessions()

    def action_pause(self) -> None:
        self.paused = not self.paused
        self.draw()

    def action_filter(self) -> None:
        field = self.query_one("#filter", Input)
        field.value = self.model.filter_text
        field.add_class("shown")
        field.focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        try:
            self.model.set_filter(event.value)
        except ValueError as error:
            self.notify(str(error), severity="error")
            return
        self._close_filter()
        self.poll()

    def on_key(self, event) -> None:
        if event.key == "escape" and self.query_one("#filter", Input).has_focus:
            self._close_filter()

    def _close_filter(self) -> None:
        self.query_one("#filter", Input).remove_class("shown")
        self.query_one("#sessions", DataTable).focus()
        self.draw_sessions()

    def action_kill(self) -> None:
        row = self.highlighted()
        if row is None:
            self.notify("no session highlighted", severity="warning")
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self.kill(row)

        self.push_screen(ConfirmKill(row), answered)

    def kill(self, row: SessionRow) -> None:
        from fw.drivers.control import ControlError  # noqa: PLC0415

        try:
            killed = self.model.kill(row)
        except ControlError as error:
            self.notify(f"kill failed: {error}", severity="error")
            return
        self.notify(f"{killed} session{'s' if killed != 1 else ''} killed: {row.proto} {row.src} -> {row.dst}")
        self.draw_sessions()
        self.poll()
