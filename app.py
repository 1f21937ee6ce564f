"""Hugging Face Spaces entry point: python app.py serves the xldemo app (GRADIO_SERVER_NAME, GRADIO_SERVER_PORT)."""

from xldemo.web.layout import build_demo, launch_options, start_decoding

demo = build_demo()

if __name__ == "__main__":
    start_decoding()
    demo.launch(**launch_options())
