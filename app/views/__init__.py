"""One module per section of the page, each with ``render(session)``."""
