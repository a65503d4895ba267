"""Extensions: a table of the installed extensions (name, version, status, error)."""

from __future__ import annotations

from typing import Any

import gradio as gr

from webui.ui.services import UIServices

EMPTY = "No extensions installed; the extension system arrives in a later version."
COLUMNS = ("name", "version", "status", "error")


def extension_table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Headers (the usual columns first, then any others the service gives) and the rows as text."""
    headers = list(COLUMNS) + sorted({key for row in rows for key in row} - set(COLUMNS))
    return headers, [["" if row.get(h) is None else str(row.get(h)) for h in headers] for row in rows]


def build_extensions_tab(services: UIServices) -> None:
    rows = services.extensions()
    with gr.Tab("Extensions", id="extensions", elem_id="tab_extensions"):
        if not rows:
            gr.Markdown(EMPTY, elem_id="extensions_empty")
            return
        headers, table = extension_table(rows)
        gr.Dataframe(value=table, headers=[h.capitalize() for h in headers], type="array", interactive=False,
                     wrap=True, elem_id="extensions_table")
