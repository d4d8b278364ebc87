"""Small modal dialogs: ask for text, confirm, choose columns."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, SelectionList


class AskText(ModalScreen[str | None]):
    """One line of text; Enter accepts, Escape cancels."""

    AUTO_FOCUS = "*"

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, prompt: str, value: str = "", password: bool = False) -> None:
        super().__init__(classes="dialog-screen")
        self.prompt, self.value, self.password = prompt, value, password

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.prompt)
            yield Input(self.value, password=self.password, id="ask")
            yield Label("Enter to accept, Escape to cancel", classes="dialog-hint")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip())

    def action_cancel(self) -> None:
        self.dismiss(None)


class Confirm(ModalScreen[bool]):
    """A yes/no question; y / n / Escape."""

    AUTO_FOCUS = "#no"  # Enter on a delete question must not delete

    BINDINGS = [Binding("y", "answer(True)", "Yes"), Binding("n,escape", "answer(False)", "No")]

    def __init__(self, question: str) -> None:
        super().__init__(classes="dialog-screen")
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.question)
            with Horizontal(classes="dialog-buttons"):
                yield Button("Yes (y)", id="yes", variant="error")
                yield Button("No (n)", id="no", variant="primary")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, value: bool) -> None:
        self.dismiss(value)


class ChooseColumns(ModalScreen[list[str] | None]):
    """Tick the columns to show; Enter/Escape closes (Escape keeps the old choice)."""

    AUTO_FOCUS = "*"

    BINDINGS = [Binding("escape", "cancel", "Cancel"), Binding("enter", "accept", "Apply", priority=True)]

    def __init__(self, columns: list[str], shown: list[str]) -> None:
        super().__init__(classes="dialog-screen")
        self.columns, self.shown = columns, set(shown)

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog tall"):
            yield Label("Columns: space toggles, Enter applies, Escape cancels")
            yield SelectionList[str](*[(c, c, c in self.shown) for c in self.columns], id="columns")

    def action_accept(self) -> None:
        chosen = list(self.query_one(SelectionList).selected)
        self.dismiss([c for c in self.columns if c in chosen])

    def action_cancel(self) -> None:
        self.dismiss(None)
