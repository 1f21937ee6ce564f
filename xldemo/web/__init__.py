"""The Gradio app: input specs, the view of a run, handlers, and the page that holds them."""
