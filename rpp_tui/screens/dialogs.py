"""Small modal dialogs: ask for text, confirm, choose one item, choose columns."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.suggester import Suggester
from textual.widgets import Button, Input, Label, OptionList, SelectionList, Static
from textual.widgets.option_list import Option


class PathSuggester(Suggester):
    """Completes a typed path from the file system: the first folder or FITS frame it could be (→ accepts)."""

    def __init__(self, keep: Callable[[str], bool] | None = None) -> None:
        super().__init__(use_cache=False, case_sensitive=True)
        self.keep = keep

    async def get_suggestion(self, value: str) -> str | None:
        if not value:
            return None
        path = Path(value).expanduser()
        folder, stem = (path, "") if value.endswith(os.sep) else (path.parent, path.name)
        try:
            names = sorted(os.listdir(folder))
        except OSError:
            return None
        for name in names:
            if not name.startswith(stem) or name == stem or name.startswith("."):
                continue
            full = folder / name
            if full.is_dir():
                return value[: len(value) - len(stem)] + name + os.sep
            if self.keep is None or self.keep(name):
                return value[: len(value) - len(stem)] + name
        return None


class AskText(ModalScreen[str | None]):
    """One line of text; Enter accepts, Escape cancels.

    ``check(text)`` returns an error message (or "") before the dialog closes:
    a refused value keeps the dialog open with the message under the box.
    """

    AUTO_FOCUS = "*"

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, prompt: str, value: str = "", password: bool = False,
                 check: Callable[[str], str] | None = None, suggester: Suggester | None = None,
                 hint: str = "Enter to accept, Escape to cancel") -> None:
        super().__init__(classes="dialog-screen")
        self.prompt, self.value, self.password = prompt, value, password
        self.check, self.suggester, self.hint = check, suggester, hint

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.prompt)
            yield Input(self.value, password=self.password, id="ask", suggester=self.suggester)
            yield Static("", id="ask-error", classes="dialog-error", markup=False)
            yield Label(self.hint, classes="dialog-hint")

    @property
    def error(self) -> str:
        return str(self.query_one("#ask-error", Static).content)

    def on_input_changed(self, _event: Input.Changed) -> None:
        self.query_one("#ask-error", Static).update("")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        value = event.value.strip()
        problem = self.check(value) if self.check and value else ""
        if problem:
            self.query_one("#ask-error", Static).update(problem)
            return
        self.dismiss(value)

    def action_cancel(self) -> None:
        self.dismiss(None)


class ChooseOne(ModalScreen[str | None]):
    """Pick one item from a list; Enter picks the highlighted one, Escape cancels."""

    AUTO_FOCUS = "*"

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, prompt: str, items: list[tuple[str, str]], current: str | None = None) -> None:
        super().__init__(classes="dialog-screen")
        self.prompt, self.items, self.current = prompt, items, current

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.prompt)
            yield OptionList(*[Option(label, id=value) for value, label in self.items], id="choices")
            yield Label("↑/↓ choose, Enter load, Escape cancel", classes="dialog-hint")

    def on_mount(self) -> None:
        options = self.query_one(OptionList)
        ids = [value for value, _ in self.items]
        options.highlighted = ids.index(self.current) if self.current in ids else 0

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)

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
