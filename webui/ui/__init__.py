"""The Gradio web interface: `webui.ui.app_ui.build_ui(services)` builds the Blocks.

`ui/` talks to the rest of the app only through `webui.ui.services.UIServices`, so it never imports torch
or the engine (only `webui.engine.request`'s constants). This package's `__init__` stays light: the
`services` types can be imported without importing gradio.
"""

import os

# Gradio's version check and Hugging Face telemetry run when gradio is imported or a Blocks is built;
# the variable must be set before `import gradio` (a user's explicit setting wins).
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
