"""Interactive controls that still leave a figure behind without a widget front end.

    def draw(t, schedule):              # returns a matplotlib Figure
        ...
    interactive_figure(draw, t=(0, 999, 1, 250), schedule=["linear", "scaled_linear"])

:func:`interactive_figure` always draws one static figure at the initial values (so a
notebook run headless - nbval, nbconvert, the solved notebooks - and a static viewer such as
GitHub show something), then, when ipywidgets and an IPython kernel are there, adds the live
controls below it. Without ipywidgets, or outside a kernel, the static figure is all you get.
"""
from __future__ import annotations

import matplotlib.pyplot as plt

__all__ = ["widgets_available", "interactive_figure"]


def widgets_available() -> bool:
    """True when ipywidgets imports and we run inside an IPython kernel (a front end may
    still be missing, e.g. under nbval: the widget is then just an inert output)."""
    try:
        import ipywidgets  # noqa: F401
        from IPython import get_ipython
    except ImportError:
        return False
    ip = get_ipython()
    return ip is not None and "IPKernelApp" in getattr(ip, "config", {})


def _initial(spec):
    if isinstance(spec, (list, tuple)) and spec and isinstance(spec[0], str):
        return spec[0]  # options: the first one
    if isinstance(spec, tuple) and len(spec) == 4:
        return spec[3]  # (min, max, step, value)
    raise TypeError(f"a control is a list of options or a (min, max, step, value) tuple, got {spec!r}")


def _widget(name, spec):
    import ipywidgets as w

    if isinstance(spec[0], str):
        return w.Dropdown(options=list(spec), value=spec[0], description=name)
    lo, hi, step, value = spec
    cls = w.IntSlider if all(isinstance(v, int) for v in spec) else w.FloatSlider
    return cls(min=lo, max=hi, step=step, value=value, description=name, continuous_update=False)


def interactive_figure(draw, **controls):
    """Show ``draw(**initial values)`` as a static figure, then live controls if possible.

    The controls redraw into an output area below them only when a value changes, so a
    headless run (nbval, nbconvert) never draws inside a widget: executing a notebook whose
    widget callback draws at creation time can hang nbconvert (jupyter/nbconvert#1921, #2029).

    Args:
        draw: ``draw(**values) -> matplotlib Figure``; it must create a new figure each call.
        controls: ``name=[option, ...]`` (a dropdown; initial: the first option) or
            ``name=(min, max, step, value)`` (a slider; ints give an IntSlider).

    Displays everything itself and returns None (so a cell ending with this call does not
    display the widget a second time).
    """
    values = {name: _initial(spec) for name, spec in controls.items()}
    draw(**values)
    plt.show()
    if not widgets_available():
        return
    import ipywidgets as w
    from IPython.display import display

    inputs = {name: _widget(name, spec) for name, spec in controls.items()}
    out = w.Output()

    def redraw(_change):
        with out:
            out.clear_output(wait=True)
            draw(**{name: c.value for name, c in inputs.items()})
            plt.show()

    for c in inputs.values():
        c.observe(redraw, names="value")
    display(w.VBox([w.HTML("<i>Live controls (need a Jupyter front end with widgets); "
                           "the figure above is drawn at the initial values:</i>"),
                    w.HBox(list(inputs.values())), out]))
