"""The "Compare" layout: one axial slice view per method, side by side (two rows beyond three
methods), described in Slicer's layout XML."""

from __future__ import annotations

COMPARE_LAYOUT_ID = 6_170_601  # an id well away from Slicer's built-in layouts
VIEW_COLORS = ("#E17012", "#12A5E1", "#8FBC3A", "#C23AC2", "#E1C812", "#3AC2A0")


def compareViewNames(count: int) -> list[str]:
    """Singleton tags of the compare layout's slice views (also their slice node names)."""
    return [f"NeuroAD{index + 1}" for index in range(count)]


def compareLayoutXml(methods: list[str]) -> str:
    """Layout XML with one slice view per method, labelled with the method's position."""
    views = [_sliceView(name, index) for index, name in enumerate(compareViewNames(len(methods)))]
    columns = 3 if len(views) > 3 else max(len(views), 1)
    rows = [views[start:start + columns] for start in range(0, len(views), columns)]
    rowXml = ["<item><layout type=\"horizontal\">" + "".join(row) + "</layout></item>"
              for row in rows]
    return "<layout type=\"vertical\">" + "".join(rowXml) + "</layout>"


def _sliceView(name: str, index: int) -> str:
    return (f"<item><view class=\"vtkMRMLSliceNode\" singletontag=\"{name}\">"
            "<property name=\"orientation\" action=\"default\">Axial</property>"
            f"<property name=\"viewlabel\" action=\"default\">{index + 1}</property>"
            f"<property name=\"viewcolor\" action=\"default\">"
            f"{VIEW_COLORS[index % len(VIEW_COLORS)]}</property>"
            "<property name=\"viewgroup\" action=\"default\">0</property>"
            "</view></item>")
