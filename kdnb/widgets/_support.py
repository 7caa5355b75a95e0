"""What the widgets share: the environment questions (asked on the ground floor, `kdnb.env`), a figure
as PNG bytes, and the explorers' ipywidgets-or-text base class."""
from __future__ import annotations

import base64
import html as html_module
import io
from types import ModuleType
from typing import Any

from kdnb.env import INSTALL_HINT, in_kernel, ipywidgets_or_none  # noqa: F401 - the widgets' names for them


def png(figure: Any) -> bytes:
    """The figure rendered by Agg as PNG bytes (fast compression: the chart redraws while training)."""
    figure.canvas.draw()
    return encoded(figure.canvas)


def encoded(canvas: Any) -> bytes:
    """What an Agg canvas holds now, as PNG bytes."""
    from PIL import Image

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

    def html(self) -> str:
        """The current numbers as HTML (a subclass with a table shows it); the plain text by default."""
        return f"<pre>{html_module.escape(self.text())}</pre>"

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        if self.widget is None:
            return {"text/plain": f"{self.text()}\n(the interactive {type(self).__name__} needs ipywidgets: "
                                  f"{INSTALL_HINT})"}
        bundle = self.widget._repr_mimebundle_(**kwargs)
        bundle = bundle[0] if isinstance(bundle, tuple) else bundle
        # What a saved notebook shows without the live widget (GitHub, nbviewer, nbconvert's HTML, a frontend
        # that saved no widget state): the numbers and the picture, as at display time.
        picture = base64.b64encode(png(self.figure())).decode("ascii") if hasattr(self, "figure") else None
        image = f"<img src='data:image/png;base64,{picture}'/>" if picture else ""
        static = {"text/html": f"<div>{self.html()}{image}</div>", "text/plain": self.text()}
        return {**bundle, **({"image/png": picture} if picture else {}), **static}

    def __repr__(self) -> str:
        return self.text()
