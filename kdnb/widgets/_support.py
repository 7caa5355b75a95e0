"""What the widgets need from their surroundings: is there a notebook to draw in, is ipywidgets
installed, and a figure as PNG bytes."""
from __future__ import annotations

import base64
import io
import sys
from types import ModuleType
from typing import Any

INSTALL_HINT = "pip install 'ipywidgets>=8' (then restart the kernel)"


def in_kernel() -> bool:
    """True inside a Jupyter kernel (JupyterLab, Notebook, VS Code, Colab, nbconvert), where images show."""
    if "IPython" not in sys.modules:
        return False
    shell = sys.modules["IPython"].get_ipython()
    return any(cls.__name__ == "ZMQInteractiveShell" for cls in type(shell).__mro__)


def ipywidgets_or_none() -> ModuleType | None:
    """The ipywidgets module, or None when it is not installed."""
    try:
        import ipywidgets
    except ImportError:
        return None
    return ipywidgets


def png(figure: Any) -> bytes:
    """The figure rendered by Agg as PNG bytes (fast compression: the chart redraws while training)."""
    from PIL import Image

    canvas = figure.canvas
    canvas.draw()
    buffer = io.BytesIO()
    rgba = Image.frombuffer("RGBA", canvas.get_width_height(), canvas.buffer_rgba())
    rgba.convert("RGB").save(buffer, format="png", compress_level=1)  # opaque figure: no alpha channel to encode
    return buffer.getvalue()


class Explorer:
    """What both explorers share: an ipywidgets box when ipywidgets is installed, text when it is not.

    A subclass builds ``self.widget`` in ``_build(widgets)`` and describes its current numbers in ``text()``.
    """

    widget: Any = None

    def _build_widget(self) -> None:
        widgets = ipywidgets_or_none()
        if widgets is not None:
            self.widget = self._build(widgets)

    def _build(self, widgets: ModuleType) -> Any:
        raise NotImplementedError

    def text(self) -> str:
        raise NotImplementedError

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        if self.widget is None:
            return {"text/plain": f"{self.text()}\n(the interactive {type(self).__name__} needs ipywidgets: "
                                  f"{INSTALL_HINT})"}
        bundle = self.widget._repr_mimebundle_(**kwargs)
        bundle = bundle[0] if isinstance(bundle, tuple) else bundle
        # What a saved notebook shows without the live widget: a picture and the numbers, as at display time.
        picture = {"image/png": base64.b64encode(png(self.figure())).decode("ascii")} if hasattr(self, "figure") else {}
        return {**bundle, **picture, "text/plain": self.text()}

    def __repr__(self) -> str:
        return self.text()
