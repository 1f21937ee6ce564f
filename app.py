"""Hugging Face Spaces entry point: python app.py serves the xldemo app (GRADIO_SERVER_NAME, GRADIO_SERVER_PORT)."""

import os

# before gradio is imported: no analytics, no Hub telemetry
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

from xldemo.ui import LAUNCH_OPTIONS, demo  # noqa: E402

if __name__ == "__main__":
    demo.launch(**LAUNCH_OPTIONS)
