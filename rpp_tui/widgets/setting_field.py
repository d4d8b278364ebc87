"""One profile setting as a form row: name, editor, unit, help, and the validation message."""

from __future__ import annotations

import dataclasses
from typing import Any

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.validation import ValidationResult, Validator
from textual.widgets import Input, Select, Static, Switch

from rpp_core.errors import SettingsError
from rpp_core.settings import check_value, field_spec


def field_kind(klass: type, name: str) -> str:
    return field_spec(klass, name).kind


def to_text(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


class _SettingValidator(Validator):
    """Runs :func:`rpp_core.settings.check_value`: the core owns the types, ranges and messages."""

    def __init__(self, klass: type, name: str, section: str) -> None:
        super().__init__()
        self.klass, self.name, self.section = klass, name, section

    def validate(self, value: str) -> ValidationResult:
        try:
            check_value(self.klass, self.name, value, f"[{self.section}]")
        except SettingsError as exc:
            return self.failure(str(exc))
        return self.success()


class SettingField(Vertical):
    """Edits ``section.name``; posts :class:`SettingField.Changed` with a valid value."""

    DEFAULT_CSS = """
    SettingField { height: auto; margin: 0 0 1 0; }
    SettingField > Horizontal { height: auto; }
    SettingField .field-name { width: 24; padding: 0 1 0 0; text-style: bold; }
    SettingField .field-unit { width: 12; padding: 0 0 0 1; color: $text-muted; }
    SettingField Input, SettingField Select { width: 1fr; }
    SettingField Switch { width: 8; height: 1; border: none; padding: 0 1; background: $boost; }
    SettingField .field-help { color: $text-muted; padding: 0 0 0 24; }
    SettingField .field-error { color: $error; padding: 0 0 0 24; display: none; }
    SettingField.-invalid .field-error { display: block; }
    """

    class Changed(Message):
        def __init__(self, field: "SettingField", value: Any) -> None:
            super().__init__()
            self.field = field
            self.value = value

    def __init__(self, section: str, klass: type, name: str, value: Any) -> None:
        super().__init__(id=f"field-{section}-{name}", classes="setting-field")
        self.section, self.klass, self.setting = section, klass, name
        self.value = value
        self.spec = field_spec(klass, name)
        self.kind = self.spec.kind
        self.meta = {**{f.name: f for f in dataclasses.fields(klass)}[name].metadata, "choices": self.spec.choices}

    @property
    def key(self) -> str:
        return f"{self.section}.{self.setting}"

    def compose(self) -> ComposeResult:
        with Horizontal():
            yield Static(self.setting, classes="field-name")
            if self.kind == "bool":
                yield Switch(value=bool(self.value), id=f"input-{self.section}-{self.setting}")
            elif self.kind == "choice":
                yield Select([(c, c) for c in self.meta["choices"]], value=self.value, allow_blank=False, compact=True,
                             id=f"input-{self.section}-{self.setting}")
            else:
                yield Input(to_text(self.value), id=f"input-{self.section}-{self.setting}",
                            validators=[_SettingValidator(self.klass, self.setting, self.section)],
                            validate_on=["changed", "submitted"], compact=True)
            unit = self.meta.get("unit", "")
            if self.kind == "bool":
                unit = "on" if self.value else "off"
            yield Static(unit, classes="field-unit")
        rng = self.meta.get("range")
        extra = f"  [{rng[0]:g} to {rng[1]:g}]" if rng else ""
        if self.kind == "list":
            extra += "  (comma-separated)"
        yield Static(self.meta.get("help", "") + extra, classes="field-help", markup=False)
        yield Static("", classes="field-error", markup=False)

    def set_value(self, value: Any) -> None:
        """Show a value loaded from a profile (no Changed message)."""
        self.value = value
        editor = self.query_one(f"#input-{self.section}-{self.setting}")
        with editor.prevent(Input.Changed, Switch.Changed, Select.Changed):
            if isinstance(editor, Switch):
                editor.value = bool(value)
                self.query_one(".field-unit", Static).update("on" if value else "off")
            elif isinstance(editor, Select):
                editor.value = value
            else:
                editor.value = to_text(value)
        self._show_error("")

    def show_error(self, message: str) -> None:
        """Show ``message`` under the field (a value the whole profile refuses); "" clears it."""
        self._show_error(message)

    def _show_error(self, message: str) -> None:
        self.set_class(bool(message), "-invalid")
        self.query_one(".field-error", Static).update(message)

    @property
    def error(self) -> str:
        return str(self.query_one(".field-error", Static).content) if self.has_class("-invalid") else ""

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        result = event.validation_result
        if result is not None and not result.is_valid:
            self._show_error("; ".join(result.failure_descriptions))
            return
        self._show_error("")
        value = check_value(self.klass, self.setting, event.value, f"[{self.section}]")
        self.value = value
        self.post_message(self.Changed(self, value))

    def on_switch_changed(self, event: Switch.Changed) -> None:
        event.stop()
        self.value = bool(event.value)
        self.query_one(".field-unit", Static).update("on" if self.value else "off")
        self.post_message(self.Changed(self, self.value))

    def on_select_changed(self, event: Select.Changed) -> None:
        event.stop()
        if event.value is Select.NULL:
            return
        self.value = event.value
        self.post_message(self.Changed(self, self.value))
