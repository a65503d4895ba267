"""Built-in extension: AUTOMATIC1111's prompt syntax, through the public `parse_prompt` hook."""

from webui.plugins import hookimpl

from . import parser


@hookimpl
def parse_prompt(text, steps, is_negative):
    # A1111 never splits a negative prompt at AND.
    return parser.parse_prompt(text, steps, allow_and=not is_negative)
