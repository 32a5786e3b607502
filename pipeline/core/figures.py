"""Figures as PNG bytes: matplotlib on its file-less backend, the same numbers giving the same
bytes (no software or date metadata)."""


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png_bytes(figure):
    """`figure` rendered as PNG bytes, then closed."""
    import io

    buffer = io.BytesIO()
    # Fixed metadata so the same numbers give the same bytes.
    figure.savefig(buffer, format="png", metadata={"Software": None})
    pyplot().close(figure)
    return buffer.getvalue()
