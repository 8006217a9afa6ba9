"""The module's Qt Designer file, loaded with PySide6 (offscreen): every widget NeuroAD.py uses
exists, and every parameter of the parameter node is bound to a widget that can show it.
Slicer's own widget classes are not in PySide6; they load as their declared base classes."""

from __future__ import annotations

import ast
import os
import re
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
QtWidgets = pytest.importorskip("PySide6.QtWidgets", reason="PySide6 is not installed; "
                                "pip install -c constraints.txt '.[test]'")
from PySide6.QtCore import QFile, QObject  # noqa: E402
from PySide6.QtUiTools import QUiLoader  # noqa: E402

MODULE = Path(__file__).resolve().parents[1] / "NeuroAD"
UI_FILE = MODULE / "Resources" / "UI" / "NeuroAD.ui"
SOURCE = (MODULE / "NeuroAD.py").read_text()
# The ticked methods are stored in the parameter node by hand: a list widget has no connector.
UNBOUND_PARAMETERS = {"methods"}
# Widget classes that Slicer's parameterNodeWrapper connects to each kind of parameter.
CONNECTABLE = {"node": {"qMRMLNodeComboBox"}, "float": {"QDoubleSpinBox", "ctkSliderWidget"},
               "choice": {"QComboBox"}, "str": {"QLineEdit", "QTextEdit"}}


@pytest.fixture(scope="module")
def loaded_ui():
    application = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    handle = QFile(str(UI_FILE))
    assert handle.open(QFile.ReadOnly)
    loader = QUiLoader()
    widget = loader.load(handle)
    handle.close()
    assert widget is not None, loader.errorString()
    yield widget
    widget.deleteLater()
    application.processEvents()


def declared_widgets() -> dict[str, ElementTree.Element]:
    return {w.get("name"): w for w in ElementTree.parse(UI_FILE).iter("widget")}


def parameter_kinds() -> dict[str, str]:
    """Each field of the @parameterNodeWrapper class in NeuroAD.py and its kind."""
    tree = ast.parse(SOURCE)
    wrapper = next(node for node in tree.body if isinstance(node, ast.ClassDef) and any(
        getattr(d, "id", "") == "parameterNodeWrapper" for d in node.decorator_list))
    kinds = {}
    for statement in wrapper.body:
        if isinstance(statement, ast.AnnAssign):
            annotation = ast.unparse(statement.annotation)
            kinds[statement.target.id] = (
                "node" if "vtkMRML" in annotation else "choice" if "Choice" in annotation
                else "float" if "float" in annotation else "str")
    return kinds


def test_every_widget_the_module_uses_is_in_the_ui(loaded_ui):
    used = set(re.findall(r"self\.ui\.(\w+)", SOURCE))
    assert len(used) > 20
    missing = sorted(name for name in used if loaded_ui.findChild(QObject, name) is None)
    assert not missing, f"NeuroAD.py uses widgets absent from NeuroAD.ui: {missing}"


def test_parameters_are_bound_to_widgets_that_can_show_them():
    kinds = parameter_kinds()
    bound = {}
    for element in declared_widgets().values():
        for prop in element.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[prop.findtext("string")] = element.get("class")
    assert set(bound) == set(kinds) - UNBOUND_PARAMETERS
    for parameter, widgetClass in bound.items():
        assert widgetClass in CONNECTABLE[kinds[parameter]], (parameter, widgetClass)


def test_slicer_widgets_are_declared_with_base_classes(loaded_ui):
    custom = {c.findtext("class"): c.findtext("extends")
              for c in ElementTree.parse(UI_FILE).iter("customwidget")}
    used = {w.get("class") for w in declared_widgets().values()}
    assert {c for c in used if c.startswith(("ctk", "qMRML"))} <= set(custom)
    assert isinstance(loaded_ui.findChild(QObject, "show3DButton"), QtWidgets.QPushButton)
    assert isinstance(loaded_ui.findChild(QObject, "applyButton"), QtWidgets.QPushButton)
    assert not loaded_ui.findChild(QObject, "applyButton").isEnabled()
