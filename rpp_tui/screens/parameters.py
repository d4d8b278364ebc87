"""Parameters: every profile setting as a form, profiles saved as TOML, API keys kept secret."""

from __future__ import annotations

import copy
import dataclasses

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import ContentSwitcher, Input, OptionList, Static, TabPane
from textual.widgets.option_list import Option

from rpp_core import settings
from rpp_core.errors import SettingsError

from ..messages import ProfileLoaded
from ..widgets.setting_field import SettingField

SECTION_TITLES = {
    "observatory": "Observatory", "masks": "Masks", "background": "Background", "detection": "Detection",
    "cosmic_rays": "Cosmic rays",
    "photometry": "Photometry", "astrometry": "Astrometry", "calibration": "Calibration",
    "services": "Services", "output": "Output", "secrets": "API keys",
}


class ParametersPane(TabPane):
    """Sections on the left, the section's settings on the right; profile actions on ctrl keys."""

    BINDINGS = [
        Binding("ctrl+s", "save", "Save"),
        Binding("ctrl+n", "save_as", "Save as"),
        Binding("ctrl+o", "load", "Load"),
        Binding("ctrl+r", "rename", "Rename", show=False),
        Binding("ctrl+t", "delete", "Delete", show=False),
        Binding("escape", "leave_form", "Sections", show=False),
    ]

    def __init__(self) -> None:
        super().__init__("2 Parameters", id="parameters")
        #: the profile as last loaded or saved: "(modified)" means the form differs from it
        self.baseline: dict | None = None
        self._building: dict = {}  # section -> its mount (awaitable)

    def compose(self) -> ComposeResult:
        yield Static("", id="profile-line", markup=False)
        with Horizontal(id="param-body"):
            yield OptionList(*[Option(SECTION_TITLES[s], id=s) for s in SECTION_TITLES], id="sections")
            with ContentSwitcher(initial="section-observatory", id="section-forms"):
                for sec in SECTION_TITLES:
                    yield VerticalScroll(id=f"section-{sec}", classes="section-form")

    def build_section(self, sec: str):
        """Mount the fields of one section, the first time it is shown.

        All ~100 fields at once (~600 widgets) held the app's first paint back by
        seconds on a busy machine; a section at a time costs a fraction of that,
        when the user asks for it.
        """
        form = self.query_one(f"#section-{sec}", VerticalScroll)
        if form.children or sec in self._building:
            return self._building.get(sec)
        if sec == "secrets":
            widgets = self._secret_widgets()
        else:
            klass, obj = settings.SECTIONS[sec], getattr(self.app.profile, sec)
            widgets = [SettingField(sec, klass, f.name, getattr(obj, f.name)) for f in dataclasses.fields(klass)]
        self._building[sec] = form.mount_all(widgets)
        return self._building[sec]

    def _secret_widgets(self) -> list:
        secrets = settings.load_secrets()
        widgets = [Static("API keys are stored in a secrets file readable only by you (mode 0600) and are never "
                          "shown again. Type a new key and press Enter to store it; submit an empty line to "
                          "remove it.", classes="field-help", markup=False)]
        for key in settings.SECRET_ENV:
            widgets.append(Vertical(
                Horizontal(Static(key, classes="field-name"),
                           Input(placeholder=settings.mask_secret(secrets.get(key, "")) or "not set",
                                 password=True, compact=True, id=f"secret-{key}")),
                Static(f"stored: {settings.mask_secret(secrets.get(key, '')) or 'no'}",
                       id=f"secret-state-{key}", classes="field-help", markup=False),
                classes="setting-field"))
        return widgets

    def on_mount(self) -> None:
        self.baseline = self.app.profile.to_dict()
        self._refresh_profile_line()
        # the first section after the first paint, so Parameters opens filled
        self.set_timer(0.5, lambda: self.build_section(self._current_section()))

    def _current_section(self) -> str:
        forms = self.query_one("#section-forms", ContentSwitcher)
        return (forms.current or "section-observatory").removeprefix("section-")

    def focus_main(self) -> None:
        self.query_one("#sections", OptionList).focus()

    def action_leave_form(self) -> None:
        """Back to the section list, where the app's single-key bindings work again."""
        self.focus_main()

    def _refresh_profile_line(self) -> None:
        names = settings.list_profiles()
        dirty = " (modified)" if self.app.profile_dirty else ""
        self.query_one("#profile-line", Static).update(
            f"Profile: {self.app.profile.name}{dirty}    saved profiles: {', '.join(names) or 'none'}")

    # ------------------------------------------------------------ form
    def on_option_list_option_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        if event.option_list.id == "sections" and event.option.id:
            self.build_section(event.option.id)
            self.query_one("#section-forms", ContentSwitcher).current = f"section-{event.option.id}"

    async def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        if event.option_list.id == "sections":
            self.build_section(event.option.id)
            pending = self._building.get(event.option.id)
            if pending is not None:
                await pending  # the fields exist before focus goes to the first one
            form = self.query_one(f"#section-{event.option.id}")
            fields = form.query("Input, Switch, Select")
            if fields:
                fields.first().focus()

    def on_setting_field_changed(self, event: SettingField.Changed) -> None:
        event.stop()
        field = event.field
        if getattr(getattr(self.app.profile, field.section), field.setting) == event.value:
            self._update_dirty()  # the value shown at start, or typed back: nothing to check
            return
        problem = self._cross_field_problem(field, event.value)
        if problem:
            field.show_error(problem)
            return
        section = getattr(self.app.profile, field.section)
        if getattr(section, field.setting) != event.value:
            setattr(section, field.setting, event.value)
        self._update_dirty()

    def _cross_field_problem(self, field: SettingField, value) -> str:
        """The core's whole-profile check (``settings.validate``) with ``value`` in place, as typed.

        Catches what one value alone cannot say (a negative radius in a list, an
        annulus inside the largest aperture). A problem the profile had before
        this value counts only when it names this field.
        """
        candidate = copy.deepcopy(self.app.profile)
        setattr(getattr(candidate, field.section), field.setting, value)
        try:
            settings.validate(candidate, f"profile {candidate.name!r}")
        except SettingsError as exc:
            message = str(exc)
            try:
                settings.validate(self.app.profile, f"profile {candidate.name!r}")
            except SettingsError:
                return message if field.setting in message else ""
            return message
        return ""

    def _update_dirty(self) -> None:
        """``(modified)`` exactly when the form differs from the profile as loaded or saved."""
        self.app.profile_dirty = self.baseline is not None and self.app.profile.to_dict() != self.baseline
        self._refresh_profile_line()

    def show_profile(self) -> None:
        """Put the app's working profile into the form."""
        profile = self.app.profile
        for field in self.query(SettingField):
            field.set_value(getattr(getattr(profile, field.section), field.setting))
        self._refresh_profile_line()

    def on_profile_loaded(self, _: ProfileLoaded) -> None:
        self.baseline = self.app.profile.to_dict()
        self.show_profile()

    def invalid_fields(self) -> list[SettingField]:
        return [f for f in self.query(SettingField) if f.has_class("-invalid")]

    # ------------------------------------------------------------ secrets
    def on_input_submitted(self, event: Input.Submitted) -> None:
        if not (event.input.id or "").startswith("secret-"):
            return
        event.stop()
        key = event.input.id.removeprefix("secret-")
        path = settings.save_secret(key, event.value)
        event.input.value = ""
        masked = settings.mask_secret(settings.load_secrets().get(key, ""))
        event.input.placeholder = masked or "not set"
        self.query_one(f"#secret-state-{key}", Static).update(f"stored: {masked or 'no'}")
        self.notify(f"{key} {'stored' if masked else 'removed'} in {path} (mode 0600)")

    # ------------------------------------------------------------ profiles
    def _check(self) -> bool:
        bad = self.invalid_fields()
        if bad:
            self.notify(f"fix {bad[0].key} first: {bad[0].error}", severity="error")
            return False
        try:
            settings.validate(self.app.profile, f"profile {self.app.profile.name!r}")
        except SettingsError as exc:
            self.notify(str(exc), severity="error", timeout=10)
            return False
        return True

    def action_save(self) -> None:
        if not self._check():
            return
        path = settings.save_profile(self.app.profile)
        self.baseline = self.app.profile.to_dict()
        self.app.profile_dirty = False
        self._refresh_profile_line()
        self.app.refresh_title()
        self.notify(f"saved profile {self.app.profile.name!r} to {path}")

    def action_save_as(self) -> None:
        from .dialogs import AskText

        if not self._check():
            return

        def check(name: str) -> str:
            # the core's rule for names; the dialog stays open with the message until the name is good
            candidate = copy.deepcopy(self.app.profile)
            candidate.name = name
            try:
                settings.validate(candidate)
            except SettingsError as exc:
                return str(exc)
            return ""

        def done(name: str | None) -> None:
            if not name:
                return
            self.app.profile.name = name
            self.action_save()

        self.app.push_screen(AskText("Save profile as (letters, digits, . _ -)", self.app.profile.name, check=check), done)

    def action_load(self) -> None:
        from .dialogs import ChooseOne

        names = settings.list_profiles()
        items = [(n, n) for n in names] + [("\0default", "default (built-in settings)")]

        def done(name: str | None) -> None:
            if name:
                self.app.load_profile(None if name == "\0default" else name)

        self.app.push_screen(ChooseOne(f"Load a profile ({len(names)} saved in {settings.locations.profiles_dir()})",
                                       items, self.app.profile.name if self.app.profile.name in names else "\0default"), done)

    def action_rename(self) -> None:
        from .dialogs import AskText

        old = self.app.profile.name
        if old not in settings.list_profiles():
            self.notify(f"profile {old!r} is not saved yet: save it first (ctrl+s)", severity="warning")
            return

        def done(name: str | None) -> None:
            if not name or name == old:
                return
            try:
                settings.rename_profile(old, name)
            except SettingsError as exc:
                self.notify(str(exc), severity="error")
                return
            self.app.profile.name = name
            self._refresh_profile_line()
            self.app.refresh_title()
            self.notify(f"renamed profile {old!r} to {name!r}")

        self.app.push_screen(AskText(f"Rename profile {old!r} to", old), done)

    def action_delete(self) -> None:
        from .dialogs import Confirm

        name = self.app.profile.name
        if name not in settings.list_profiles():
            self.notify(f"profile {name!r} is not saved: nothing to delete", severity="warning")
            return

        def done(yes: bool | None) -> None:
            if yes:
                settings.delete_profile(name)
                self.notify(f"deleted profile {name!r}")
                self.app.load_profile(None)

        self.app.push_screen(Confirm(f"Delete profile {name!r} ({settings.profile_path(name)})?"), done)
