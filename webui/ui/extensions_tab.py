"""Extensions: the installed extensions (version, status, errors), enable/disable, install from a git URL,
requirements (only after explicit confirmation), updates and removal.

Every action is checked again by the service: when the app is exposed (--listen/--share) installing,
updating and removing are refused unless --enable-insecure-extension-access was given. The buttons are
also disabled then, but that is only a courtesy.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import Any

import gradio as gr

from webui.errors import WebUIError
from webui.ui.services import UIServices

EMPTY = "No extensions installed."
COLUMNS = ("name", "version", "status", "error")
RESTART_NOTE = "Changes take effect when the app restarts."
LOCKED_NOTE = ("Installing, updating and removing extensions is disabled because this app is reachable from other "
               "computers (--listen or --share). Start it with --enable-insecure-extension-access to allow it.")


def extension_table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Headers (the usual columns first, then any others the service gives) and the rows as text."""
    headers = list(COLUMNS) + sorted({key for row in rows for key in row} - set(COLUMNS))
    return headers, [["" if row.get(h) is None else str(row.get(h)) for h in headers] for row in rows]


def _message(action: Callable[[], str]) -> str:
    """Run an action; its message, or its error, as HTML for the status line."""
    try:
        return f'<div class="webui-ext-ok">{html.escape(action())}</div>'
    except WebUIError as exc:
        return f'<div class="webui-ext-error">{html.escape(str(exc))}</div>'


def build_extensions_tab(services: UIServices) -> None:
    rows = services.extensions()
    names = [row["name"] for row in rows]
    allowed = services.extension_access()
    with gr.Tab("Extensions", id="extensions", elem_id="tab_extensions"):
        gr.Markdown(RESTART_NOTE if allowed else f"{RESTART_NOTE}\n\n**{LOCKED_NOTE}**", elem_id="extensions_note")
        if rows:
            headers, table = extension_table(rows)
            gr.Dataframe(value=table, headers=[h.capitalize() for h in headers], type="array", interactive=False,
                         wrap=True, elem_id="extensions_table")
        else:
            gr.Markdown(EMPTY, elem_id="extensions_empty")
        status = gr.HTML("", elem_id="extensions_status")
        with gr.Row():
            chosen = gr.Dropdown(choices=names, value=None, label="Extension", elem_id="extensions_chosen", scale=3)
            enable = gr.Button("Enable", elem_id="extensions_enable", scale=1)
            disable = gr.Button("Disable", elem_id="extensions_disable", scale=1)
        with gr.Accordion("Install, update, remove", open=allowed):
            with gr.Row():
                url = gr.Textbox(label="Git repository URL (https://...) or local repository path",
                                 elem_id="extensions_url", scale=4, interactive=allowed)
                install = gr.Button("Install", elem_id="extensions_install", variant="primary", scale=1,
                                    interactive=allowed)
            with gr.Row():
                check = gr.Button("Check for updates", elem_id="extensions_check", interactive=allowed)
                update = gr.Button("Update the chosen extension", elem_id="extensions_update", interactive=allowed)
                uninstall = gr.Button("Remove the chosen extension", elem_id="extensions_uninstall",
                                      variant="stop", interactive=allowed)
            with gr.Row():
                show = gr.Button("Show its Python requirements", elem_id="extensions_show_requirements")
                confirm = gr.Checkbox(label="I trust this extension: install its Python packages with pip",
                                      elem_id="extensions_confirm", interactive=allowed)
                requirements = gr.Button("Install requirements", elem_id="extensions_install_requirements",
                                         interactive=allowed)

    def chosen_name(value: str | None) -> str:
        if not value:
            raise WebUIError("Choose an extension first.")
        return value

    def updates() -> str:
        found = services.check_extension_updates()
        if not found:
            return "No installed community extensions."
        return "; ".join(f"{r['name']}: " + (r["error"] or ("update available" if r["behind"] else "up to date"))
                         for r in found)

    private = {"api_visibility": "private", "queue": True}
    enable.click(lambda name: _message(lambda: services.set_extension_enabled(chosen_name(name), True)),
                 inputs=chosen, outputs=status, **private)
    disable.click(lambda name: _message(lambda: services.set_extension_enabled(chosen_name(name), False)),
                  inputs=chosen, outputs=status, **private)
    install.click(lambda value: _message(lambda: services.install_extension(value or "")), inputs=url,
                  outputs=status, **private)
    check.click(lambda: _message(updates), outputs=status, **private)
    update.click(lambda name: _message(lambda: services.update_extension(chosen_name(name))), inputs=chosen,
                 outputs=status, **private)
    uninstall.click(lambda name: _message(lambda: services.uninstall_extension(chosen_name(name))), inputs=chosen,
                    outputs=status, **private)
    show.click(lambda name: _message(lambda: ", ".join(services.extension_requirements(chosen_name(name)))
                                     or "It needs no Python packages."), inputs=chosen, outputs=status, **private)
    requirements.click(
        lambda name, ok: _message(lambda: services.install_extension_requirements(chosen_name(name), bool(ok))),
        inputs=[chosen, confirm], outputs=status, **private)


def build_extension_tabs(services: UIServices) -> None:
    """The tabs extensions add; one whose build fails shows its error instead of breaking the page."""
    for name, spec in services.extension_tabs():
        with gr.Tab(spec.title, id=f"ext_{name}", elem_id=f"tab_ext_{name}"):
            try:
                spec.build()
            except Exception as exc:  # an extension's bug must not take the whole UI down
                gr.Markdown(f"Extension '{name}' could not build this tab: {type(exc).__name__}: {exc}")
