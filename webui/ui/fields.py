"""Components bound to GenerationRequest fields by name, and the request defaults the UI starts from.

Gradio checks Slider/Number bounds and Dropdown/Radio choices itself, with messages that name no field
("Value 0 is less than minimum value 1"). The request is validated on the server by GenerationRequest,
whose errors name the field, the value and what is allowed; so the field components below show their
limits in the browser but pass every value through unchanged (integral numbers become ints). They are
Gradio "templates" (`is_template`), rendered by the frontend exactly like their base class.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, fields
from typing import Any

import gradio as gr
from gradio.components import Component

from webui.engine.request import GenerationRequest

REQUEST_DEFAULTS: dict[str, Any] = {
    f.name: f.default for f in fields(GenerationRequest) if f.default is not MISSING
}


def _integral(value: Any, precision: int | None) -> Any:
    """7.0 -> 7 when the component holds integers; anything else is left for the server to judge."""
    if precision == 0 and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


class FieldSlider(gr.Slider):
    """A Slider whose value reaches the handler as given (no bounds check, no rounding)."""

    is_template = True

    def preprocess(self, payload: Any) -> Any:
        return _integral(payload, self.precision)


class FieldNumber(gr.Number):
    """A Number whose value reaches the handler as given (no bounds check, no rounding)."""

    is_template = True

    def preprocess(self, payload: Any) -> Any:
        return _integral(payload, self.precision)


class FieldDropdown(gr.Dropdown):
    """A Dropdown that passes any value through (aliases, API indexes, names added after a refresh)."""

    is_template = True

    def preprocess(self, payload: Any) -> Any:
        return payload


class FieldRadio(gr.Radio):
    """A Radio that passes any value through (the request accepts names case-insensitively and indexes)."""

    is_template = True

    def preprocess(self, payload: Any) -> Any:
        return payload


def _same(value: Any) -> Any:
    return value


@dataclass(frozen=True)
class Binding:
    """One request field shown by one component, with conversions where the two differ."""

    component: Component
    to_request: Callable[[Any], Any] = _same  # component value -> field value
    from_request: Callable[[Any], Any] = _same  # field value -> component value


def collect(bindings: Mapping[str, Binding], values: Mapping[str, Any]) -> dict[str, Any]:
    """Field name -> request value, from the component values by field name."""
    return {name: b.to_request(values[name]) for name, b in bindings.items() if name in values}


def fill(bindings: Mapping[str, Binding], field_values: Mapping[str, Any]) -> dict[Component, Any]:
    """Component -> new value, for the fields this tab shows (others are ignored)."""
    return {b.component: b.from_request(field_values[name]) for name, b in bindings.items() if name in field_values}


def slider(name: str, label: str, minimum: float, maximum: float, step: float, elem_id: str,
           integer: bool = True, value: Any = None, defaults: Mapping[str, Any] = REQUEST_DEFAULTS,
           **kwargs: Any) -> FieldSlider:
    """A field slider starting at `defaults[name]` (the request's default unless the tab starts elsewhere)."""
    return FieldSlider(minimum=minimum, maximum=maximum, step=step, label=label, elem_id=elem_id,
                       value=defaults[name] if value is None else value,
                       precision=0 if integer else None, **kwargs)
