"""Hugging Face Spaces entry point: python app.py serves the xldemo app (GRADIO_SERVER_NAME, GRADIO_SERVER_PORT)."""

import sys

from xldemo.errors import XLDemoError
from xldemo.web.layout import build_demo, launch_options, start_decoding

try:
    demo = build_demo()
except XLDemoError as e:  # an operator's setting that is not one: said in one line, as the CLI says a bad input
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)

if __name__ == "__main__":
    start_decoding()
    demo.launch(**launch_options())
