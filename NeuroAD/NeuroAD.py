"""NeuroAD: unsupervised anomaly detection in brain MRI, as a 3D Slicer module.

The module never runs a model itself: it writes the input to a temporary file, runs the
NeuroAD engine's worker (`python -m NeuroADLib.worker`) in a separate process with Slicer's
own Python (or one the user sets, e.g. with a CUDA build of torch), follows its JSON events
from a timer so the GUI stays live, and loads the outputs as nodes. Everything that does not
need the application or Qt lives in NeuroADSlicerLib and is tested outside Slicer.
"""

import importlib
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Union

import qt
import slicer
import vtk
from NeuroADSlicerLib import dependencies, engine, layout, runs, worker
from NeuroADSlicerLib.mrml import setMapThreshold
from NeuroADSlicerLib.results import ResultNodes
from slicer import (
    vtkMRMLLabelMapVolumeNode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode,
)
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

DEVICES = {"auto": "auto", "CPU": "cpu", "GPU": "cuda"}  # GUI choice -> engine device
WORKER_PYTHON_SETTING = "NeuroAD/WorkerPython"
RUN_POLL_MS = 200
THRESHOLD_DEBOUNCE_MS = 150


class NeuroAD(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("NeuroAD")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Neuroimaging")]
        self.parent.dependencies = []
        self.parent.contributors = ["NeuroAD developers"]
        self.parent.helpText = _(
            "Unsupervised anomaly detection in brain MRI: from a scan, the patient's age and "
            "sex and a method (diffusion models such as CADD, or the voxel-wise normative "
            "baseline), NeuroAD computes a pseudo-healthy image, an anomaly map, an anomaly "
            "segmentation whose threshold you tune live, and a subject-level abnormality "
            "index against healthy subjects. Several methods can be compared side by side. "
            "Research use only, not for diagnosis.")
        self.parent.acknowledgementText = _(
            "Normative models trained on the IXI dataset (CC BY-SA 3.0). The demo case is from "
            "TCGA via The Cancer Imaging Archive (CC BY 3.0).")


@parameterNodeWrapper
class NeuroADParameterNode:
    """The module's inputs. Age -1 and an empty sex mean "not entered"; `methods` holds the
    ticked methods, comma-separated (a list widget has no parameter connector)."""

    inputVolume: vtkMRMLScalarVolumeNode
    # typing.Union with None, not "|": the wrapper recognises node unions by typing.Union.
    brainMask: Union[vtkMRMLLabelMapVolumeNode, vtkMRMLSegmentationNode, None]  # noqa: UP007
    age: Annotated[float, WithinRange(-1.0, 120.0)] = -1.0
    sex: Annotated[str, Choice(["", "F", "M"])] = ""
    device: Annotated[str, Choice(list(DEVICES))] = "auto"
    options: str = ""
    methods: str = "zscore"


class NeuroADWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._choices: list[engine.MethodChoice] = []
        self._run = None
        self._results: dict[str, ResultNodes] = {}
        self._consensus = None
        self._resultsInput = None
        self._resultInputs: dict = {}  # result name -> the volume it is of (visits differ)
        self._visitRows: list[tuple] = []  # (volume selector, age spin box) per follow-up

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/NeuroAD.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = NeuroADLogic()

        self._runTimer = qt.QTimer()
        self._runTimer.setInterval(RUN_POLL_MS)
        self._runTimer.timeout.connect(self.onRunTimer)
        self._thresholdTimer = qt.QTimer()
        self._thresholdTimer.setSingleShot(True)
        self._thresholdTimer.setInterval(THRESHOLD_DEBOUNCE_MS)
        self._thresholdTimer.timeout.connect(self.applyThreshold)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.applyButton.clicked.connect(self.onApplyButton)
        self.ui.methodsListWidget.itemChanged.connect(self.onMethodItemChanged)
        self.ui.workerPythonPathLineEdit.currentPath = qt.QSettings().value(
            WORKER_PYTHON_SETTING, "")
        self.ui.workerPythonPathLineEdit.currentPathChanged.connect(self.onWorkerPythonChanged)
        self.ui.resultMethodComboBox.currentTextChanged.connect(self.showSelectedResult)
        self.ui.thresholdSlider.valueChanged.connect(self.onThresholdChanged)
        self.ui.opacitySlider.valueChanged.connect(self.showSelectedResult)
        self.ui.pseudoHealthyCheckBox.toggled.connect(self.showSelectedResult)
        self.ui.compareButton.clicked.connect(self.onCompare)
        self.ui.verifyModelButton.clicked.connect(self.onVerifyModels)
        self.ui.importModelButton.clicked.connect(self.onImportModelZip)
        self.ui.importModelFolderButton.clicked.connect(self.onImportModelFolder)
        self.ui.deleteModelButton.clicked.connect(self.onDeleteModel)
        self.ui.openModelsFolderButton.clicked.connect(self.onOpenModelsFolder)
        self.ui.refreshModelsButton.clicked.connect(self.refreshModels)
        self.ui.recalibrateModelButton.clicked.connect(self.onRecalibrateModel)
        self.ui.visitsTableWidget.setHorizontalHeaderLabels([_("Volume"), _("Age (years)")])
        self.ui.addVisitButton.clicked.connect(self.onAddVisit)
        self.ui.removeVisitButton.clicked.connect(self.onRemoveVisit)

        self.refreshModels()
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()
        if self._run is not None:
            self._run.abort()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent,
                                self.updateApplyButton)

    def onSceneStartClose(self, caller, event) -> None:
        if self._run is not None:
            self._runTimer.stop()
            self._run.abort()
            self._run = None
            self.setRunning(False)
        self.setParameterNode(None)
        self._results = {}
        self._consensus = None
        self.ui.resultsCollapsibleButton.enabled = False

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            volume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if volume:
                self._parameterNode.inputVolume = volume

    def setParameterNode(self, parameterNode: NeuroADParameterNode | None) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent,
                                self.updateApplyButton)
        self._parameterNode = parameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent,
                             self.updateApplyButton)
            self.showMethodSelection()
            self.updateApplyButton()

    # Inputs ------------------------------------------------------------------------------

    def selectedMethods(self) -> list[str]:
        methods = self._parameterNode.methods if self._parameterNode else ""
        return [name for name in methods.split(",") if name]

    def showMethodSelection(self) -> None:
        """Tick the list's methods from the parameter node (a method without a model cannot
        be ticked: its item is disabled and says why)."""
        selected = set(self.selectedMethods())
        listWidget = self.ui.methodsListWidget
        wasBlocked = listWidget.blockSignals(True)
        listWidget.clear()
        for choice in self._choices:
            item = qt.QListWidgetItem(choice.name)
            item.setToolTip(choice.description + (
                f"\nModel: {choice.model}" if choice.available
                else "\nNo model installed: import one in the Models section."))
            flags = qt.Qt.ItemIsUserCheckable
            if choice.available:
                flags |= qt.Qt.ItemIsEnabled
            item.setFlags(flags)
            item.setCheckState(qt.Qt.Checked if choice.name in selected and choice.available
                               else qt.Qt.Unchecked)
            listWidget.addItem(item)
        listWidget.blockSignals(wasBlocked)
        self.showVisitControls()

    def onMethodItemChanged(self, item) -> None:
        listWidget = self.ui.methodsListWidget
        ticked = [listWidget.item(row).text() for row in range(listWidget.count)
                  if listWidget.item(row).checkState() == qt.Qt.Checked]
        self._parameterNode.methods = ",".join(ticked)
        self.showVisitControls()

    def showVisitControls(self) -> None:
        """The follow-up visit list, shown only when a longitudinal method is selected."""
        visible = engine.isLongitudinal(self.selectedMethods())
        for widget in (self.ui.visitsLabel, self.ui.visitsTableWidget,
                       self.ui.visitButtonsWidget):
            widget.visible = visible

    def onAddVisit(self) -> None:
        """A follow-up row: its volume and the age at that scan (a year after the last)."""
        table = self.ui.visitsTableWidget
        row = table.rowCount
        table.insertRow(row)
        selector = slicer.qMRMLNodeComboBox()
        selector.nodeTypes = ["vtkMRMLScalarVolumeNode"]
        selector.addEnabled = selector.removeEnabled = False
        selector.noneEnabled = True
        selector.setMRMLScene(slicer.mrmlScene)
        age = qt.QDoubleSpinBox()
        age.setRange(0.0, 120.0)
        age.setDecimals(1)
        age.value = min(120.0, self.visitAges()[-1] + 1.0)
        selector.currentNodeChanged.connect(self.updateApplyButton)
        age.valueChanged.connect(self.updateApplyButton)
        table.setCellWidget(row, 0, selector)
        table.setCellWidget(row, 1, age)
        self._visitRows.append((selector, age))
        self.updateApplyButton()

    def onRemoveVisit(self) -> None:
        if self._visitRows:
            self._visitRows.pop()
            self.ui.visitsTableWidget.removeRow(self.ui.visitsTableWidget.rowCount - 1)
            self.updateApplyButton()

    def visitVolumes(self) -> list:
        """Every visit's volume in scan order: the input, then the follow-ups."""
        followUps = [selector.currentNode() for selector, _age in self._visitRows]
        return [self._parameterNode.inputVolume, *followUps]

    def visitAges(self) -> list[float]:
        return [self._parameterNode.age] + [age.value for _selector, age in self._visitRows]

    def updateApplyButton(self, caller=None, event=None) -> None:
        """Apply is enabled only for a complete input; its tooltip says what is missing."""
        if self._run is not None or self._parameterNode is None:
            return
        parameters = self._parameterNode
        problems = engine.requestProblems(
            parameters.inputVolume is not None, parameters.age, parameters.sex,
            self.selectedMethods(), parameters.options, self._choices)
        if engine.isLongitudinal(self.selectedMethods()):
            problems += engine.visitProblems(
                self.visitAges(), [volume is not None for volume in self.visitVolumes()[1:]])
        self.ui.applyButton.enabled = not problems
        self.ui.applyButton.toolTip = (
            _("To run: ") + "; ".join(problems) if problems
            else _("Run {methods} on {volume}").format(
                methods=", ".join(self.selectedMethods()),
                volume=parameters.inputVolume.GetName()))

    def onWorkerPythonChanged(self, path: str) -> None:
        qt.QSettings().setValue(WORKER_PYTHON_SETTING, path)

    # Runs --------------------------------------------------------------------------------

    def onApplyButton(self) -> None:
        if self._run is not None:
            self._run.cancel()
            self.ui.applyButton.enabled = False
            return
        parameters = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("NeuroAD could not start.")):
            if not self.logic.ensureDependencies():
                return
            self.ui.logTextEdit.clear()
            self._resultsInput = parameters.inputVolume
            if engine.isLongitudinal(self.selectedMethods()):
                self._run = self.logic.process(
                    self.visitVolumes(), self.visitAges(), parameters.sex,
                    self.selectedMethods()[0], device=DEVICES[parameters.device],
                    options=engine.parseOptions(parameters.options), blocking=False,
                    installDependencies=False)
            else:
                self._run = self.logic.startProcess(
                    parameters.inputVolume, parameters.age, parameters.sex,
                    self.selectedMethods(), parameters.brainMask, DEVICES[parameters.device],
                    engine.parseOptions(parameters.options))
            self.setRunning(True)
            self._runTimer.start()

    def setRunning(self, running: bool) -> None:
        self.ui.applyButton.text = _("Cancel") if running else _("Apply")
        self.ui.applyButton.toolTip = _("Stop the run") if running else ""
        self.ui.applyButton.enabled = True
        self.ui.inputsCollapsibleButton.enabled = not running
        self.ui.modelsCollapsibleButton.enabled = not running
        if running:
            self.ui.progressBar.value = 0
        else:
            self.updateApplyButton()

    def onRunTimer(self) -> None:
        run = self._run
        try:
            events = run.poll()
        except Exception:
            self._runTimer.stop()
            self._run = None
            run.abort()
            self.setRunning(False)
            raise
        for event in events:
            if event.get("event") == "log":
                self.ui.logTextEdit.appendPlainText(event["message"])
            elif event.get("event") == "error":
                self.ui.logTextEdit.appendPlainText(f"{event['type']}: {event['message']}")
            elif event.get("event") == "stage":
                self.ui.logTextEdit.appendPlainText(event["stage"])
        self.ui.progressBar.value = int(1000 * run.progress.fraction)
        self.ui.statusLabel.text = run.progress.text()
        if run.finished:
            self._runTimer.stop()
            self._run = None
            self.setRunning(False)
            self.onRunFinished(run)

    def onRunFinished(self, run: runs.SceneRun) -> None:
        if run.state is runs.RunState.SUCCEEDED:
            self.ui.statusLabel.text = _("Done.")
            if isinstance(run, runs.VisitsSceneRun):
                # One entry per visit: the combo box steps through them, one threshold for all.
                names = [f"visit {k}: {volume.GetName()}"
                         for k, volume in enumerate(run.volumes, start=1)]
                self._resultInputs = dict(zip(names, run.volumes, strict=True))
                self.showResults(dict(zip(names, run.visitResults, strict=True)))
            else:
                self._resultInputs = {}
                self.showResults(run.results, run.consensus)
            return
        self.ui.statusLabel.text = run.error.args[0] if run.error else run.state.value
        if run.state is runs.RunState.FAILED:
            error = run.error
            slicer.util.errorDisplay(
                f"{error}\n\n{runs.errorHint(error.code)}",
                windowTitle=_("NeuroAD failed"),
                detailedText=self.ui.logTextEdit.toPlainText() + "\n" + error.details)

    # Results -----------------------------------------------------------------------------

    def showResults(self, results: dict[str, ResultNodes], consensus=None) -> None:
        self._results = results
        self._consensus = consensus
        combo = self.ui.resultMethodComboBox
        wasBlocked = combo.blockSignals(True)
        combo.clear()
        for method in results:
            combo.addItem(method)
        combo.blockSignals(wasBlocked)
        self.ui.resultsCollapsibleButton.enabled = True
        self.ui.resultsCollapsibleButton.collapsed = False
        self.ui.compareButton.enabled = len(results) > 1
        self.ui.thresholdSlider.value = 1.0
        self.showSelectedResult()

    def selectedResult(self) -> ResultNodes | None:
        return self._results.get(self.ui.resultMethodComboBox.currentText)

    def showSelectedResult(self, *unused) -> None:
        result = self.selectedResult()
        if result is None:
            return
        volume = self._resultInputs.get(self.ui.resultMethodComboBox.currentText,
                                        self._resultsInput)
        self.logic.showResult(volume, result, self.ui.opacitySlider.value,
                              self.ui.pseudoHealthyCheckBox.checked)
        self.ui.show3DButton.setSegmentationNode(result.segmentation)
        self.updateResultLabels()

    def onThresholdChanged(self, factor: float) -> None:
        """Move the maps' display thresholds at once; the segmentations follow after the
        debounce, so dragging stays smooth."""
        for result in self._results.values():
            setMapThreshold(result.anomalyMap, factor * result.calibratedThreshold)
        self._thresholdTimer.start()

    def applyThreshold(self) -> None:
        factor = self.ui.thresholdSlider.value
        for result in self._results.values():
            result.setThreshold(factor * result.calibratedThreshold)
        self.updateResultLabels()

    def updateResultLabels(self) -> None:
        result = self.selectedResult()
        if result is None:
            return
        self.ui.abnormalityIndexLabel.text = _(
            "{index:.2f} (z = {z:+.2f} against healthy subjects)").format(
            index=result.abnormalityIndex, z=result.abnormalityIndexZ)
        warnings = result.distributionWarnings
        if result.benchmarkCaveat:
            warnings.append(_("The method is {caveat}.").format(caveat=result.benchmarkCaveat))
        self.ui.distributionLabel.text = (
            _("Unlike the healthy training scans:") + "\n" + "\n".join(
                f"\u2022 {warning}" for warning in warnings) if warnings
            else _("Intensities and flagged volume within the healthy training scans' range."))
        self.ui.distributionLabel.styleSheet = "color: #d9822b" if warnings else ""
        live = result.liveThreshold
        self.ui.thresholdInfoLabel.text = _(
            "Map value {value:.3g}: {volume:.1f} mL above it").format(
            value=live.threshold, volume=live.volumeMl)

    def onCompare(self) -> None:
        self.logic.showComparison(self._resultsInput, list(self._results.values()),
                                  self.ui.opacitySlider.value, self._consensus,
                                  [self._resultInputs.get(name, self._resultsInput)
                                   for name in self._results])

    # Models ------------------------------------------------------------------------------

    def refreshModels(self) -> None:
        from NeuroADLib.models import list_bundles, store_folder

        table = self.ui.modelsTableWidget
        bundles = list_bundles()
        table.setRowCount(len(bundles))
        for row, bundle in enumerate(bundles):
            values = (bundle.id, bundle.method, str(bundle.manifest.get("version", "")),
                      _("in your store") if _isStored(bundle) else _("shipped"))
            for column, value in enumerate(values):
                item = qt.QTableWidgetItem(value)
                item.setToolTip(str(bundle.folder))
                table.setItem(row, column, item)
        table.resizeColumnsToContents()
        self.ui.modelsStoreLabel.text = _("Your model store: {folder}").format(
            folder=store_folder())
        self._choices = engine.methodChoices()
        if self._parameterNode:
            self.showMethodSelection()
            self.updateApplyButton()

    def selectedModelId(self) -> str | None:
        rows = self.ui.modelsTableWidget.selectionModel().selectedRows()
        return self.ui.modelsTableWidget.item(rows[0].row(), 0).text() if rows else None

    def onVerifyModels(self) -> None:
        from NeuroADLib.errors import ModelError
        from NeuroADLib.models import list_bundles, verify_bundle

        selected = self.selectedModelId()
        bundles = [b for b in list_bundles() if selected in (None, b.id)]
        with slicer.util.WaitCursor():
            problems = []
            for bundle in bundles:
                try:
                    verify_bundle(bundle)
                except ModelError as error:
                    problems.append(str(error))
        if problems:
            slicer.util.errorDisplay("\n".join(problems), windowTitle=_("Models"))
        else:
            slicer.util.infoDisplay(_("{count} model(s) verified: every file matches its "
                                      "manifest.").format(count=len(bundles)),
                                    windowTitle=_("Models"))

    def onImportModelZip(self) -> None:
        path = qt.QFileDialog.getOpenFileName(self.parent, _("Import a NeuroAD model"), "",
                                              _("Model bundle (*.zip)"))
        if path:
            self.importModel(path)

    def onImportModelFolder(self) -> None:
        path = qt.QFileDialog.getExistingDirectory(self.parent, _("Import a NeuroAD model"))
        if path:
            self.importModel(path)

    def importModel(self, path: str) -> None:
        from NeuroADLib.models.store import import_bundle

        with slicer.util.tryWithErrorDisplay(_("The model could not be imported."),
                                             waitCursor=True):
            bundle = import_bundle(path)
            slicer.util.infoDisplay(_("Imported and verified {id} ({method}).").format(
                id=bundle.id, method=bundle.method), windowTitle=_("Models"))
        self.refreshModels()

    def onDeleteModel(self) -> None:
        from NeuroADLib.models.store import delete_bundle

        modelId = self.selectedModelId()
        if modelId is None or not slicer.util.confirmOkCancelDisplay(
                _("Delete the model {id} from your model store?").format(id=modelId)):
            return
        with slicer.util.tryWithErrorDisplay(_("The model could not be deleted.")):
            delete_bundle(modelId)
        self.refreshModels()

    def onRecalibrateModel(self) -> None:
        """The selected model's method recalibrated on a folder of the site's healthy controls
        (logic.recalibrate's RecalibrationRun), with a progress dialog that can cancel it."""
        from NeuroADLib.models import list_bundles

        bundle = next((b for b in list_bundles() if b.id == self.selectedModelId()), None)
        if bundle is None:
            slicer.util.warningDisplay(_("Select the model to recalibrate in the table."),
                                       windowTitle=_("Models"))
            return
        controls = qt.QFileDialog.getExistingDirectory(
            self.parent, _("Healthy controls: a folder with participants.csv and the scans"))
        if not controls or not self.logic.ensureDependencies():
            return
        device = DEVICES[self._parameterNode.device] if self._parameterNode else "auto"
        run = runs.RecalibrationRun(bundle.method, controls, None, device,
                                    self.logic.workerSettings)
        dialog = slicer.util.createProgressDialog(
            parent=self.parent, maximum=100, windowTitle=_("Recalibrating {method}").format(
                method=bundle.method))

        def follow() -> None:
            slicer.app.processEvents()
            dialog.labelText = run.progress.stage
            dialog.value = int(100 * run.progress.fraction)
            if dialog.wasCanceled:
                run.cancel()

        try:
            runs.runToCompletion(run, idle=follow, onEvent=_logEvent)
        except runs.RunError as error:
            slicer.util.errorDisplay(str(error), windowTitle=_("Models"),
                                     detailedText=error.details)
            return
        finally:
            dialog.close()
        slicer.util.infoDisplay(_("{method} recalibrated on {controls}: {bundle} is in your "
                                  "model store and serves {method} from now on.").format(
                                      method=bundle.method, controls=controls,
                                      bundle=run.bundle.name), windowTitle=_("Models"))
        self.refreshModels()

    def onOpenModelsFolder(self) -> None:
        from NeuroADLib.models import store_folder

        folder = store_folder()
        folder.mkdir(parents=True, exist_ok=True)
        qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(str(folder)))


def _isStored(bundle) -> bool:
    from NeuroADLib.models import store_folder

    return store_folder().resolve() in bundle.folder.resolve().parents


class DependencyInstaller:
    """Installs what the worker needs into Slicer's Python on first use, after one
    confirmation: torch through the PyTorch extension (which picks the CUDA build for the
    driver), the rest from Resources/requirements.txt with Slicer's numpy, SimpleITK, requests
    and torch held at their versions."""

    def __init__(self, requirementsPath: Path):
        self.requirements = dependencies.readRequirements(requirementsPath)

    def missing(self) -> list[str]:
        return dependencies.missingRequirements(
            [dependencies.TORCH_REQUIREMENT, *self.requirements])

    def ensure(self, confirm: bool = True) -> bool:
        """True when everything is installed (now or already); False if the user declined."""
        missing = self.missing()
        if not missing:
            return True
        if confirm and not slicer.util.confirmOkCancelDisplay(
                _("NeuroAD needs these Python packages in Slicer, which will be downloaded and "
                  "installed now (this can take several minutes):\n\n{packages}").format(
                    packages="\n".join(missing)),
                windowTitle=_("NeuroAD: install dependencies")):
            return False
        with slicer.util.WaitCursor():
            if dependencies.TORCH_REQUIREMENT in missing:
                self._installTorch()
            packages = [name for name in missing if name != dependencies.TORCH_REQUIREMENT]
            if packages:
                self._installPackages(packages)
        return True

    @staticmethod
    def _installTorch() -> None:
        try:
            import PyTorchUtils
        except ModuleNotFoundError:
            raise RuntimeError(_("NeuroAD needs the PyTorch extension: install 'PyTorch' from "
                                 "the Extensions Manager, restart Slicer, and try again.")
                               ) from None
        minimum = dependencies.TORCH_REQUIREMENT.removeprefix("torch")
        if PyTorchUtils.PyTorchUtilsLogic().installTorch(
                askConfirmation=False, torchVersionRequirement=minimum) is None:
            raise RuntimeError(_("PyTorch was not installed."))

    @staticmethod
    def _installPackages(packages: list[str]) -> None:
        constraints = Path(tempfile.mkdtemp(prefix="NeuroAD-pip-")) / "constraints.txt"
        constraints.write_text(dependencies.protectedConstraints())
        try:
            ensure = _pipEnsure()
            if ensure is not None:
                from packaging.requirements import Requirement

                ensure([Requirement(name) for name in packages], constraints=str(constraints),
                       prompt_install=False, prompt_restart=True, requester="NeuroAD")
                return
            upgradedInUse = dependencies.alreadyImported(packages)
            slicer.util.pip_install([*packages, "--constraint", str(constraints)])
            if upgradedInUse and slicer.util.confirmYesNoDisplay(
                    _("Packages already in use were upgraded ({names}). Restart Slicer now?")
                    .format(names=", ".join(upgradedInUse))):
                slicer.util.restart()
        finally:
            shutil.rmtree(constraints.parent, ignore_errors=True)


def _pipEnsure():
    """slicer.pydeps.pip_ensure (Slicer 5.11+) or slicer.packaging.pip_ensure, else None."""
    for name in ("slicer.pydeps", "slicer.packaging"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(module, "pip_ensure"):
            return module.pip_ensure
    return None


def pythonSlicer() -> str:
    """Slicer's Python launcher, which runs the worker with Slicer's Python environment."""
    found = shutil.which("PythonSlicer") or shutil.which(
        "PythonSlicer", path=str(Path(sys.executable).parent))
    if not found:
        raise RuntimeError(_("PythonSlicer was not found next to Slicer; set a worker Python in "
                             "NeuroAD > Advanced."))
    return found


class NeuroADLogic(ScriptedLoadableModuleLogic):
    """NeuroAD's logic, also the console API:

        logic = slicer.util.getModuleLogic("NeuroAD")
        result = logic.process(volume, age=54, sex="F", method="zscore")
        visits = logic.process([v1, v2, v3], [61.0, 62.5, 64.1], "F", "longitudinal")
        summary = logic.runBatch("cases.csv", ["zscore"], "/data/results")
        summary = logic.runBatch("cases.csv", "zscore", "/data/results", cluster="local:4")
        bundle = logic.recalibrate("zscore", "/data/site_controls")  # participants.csv + scans

    `workerSettings` (default: from the module settings) and `installer` can be given, e.g.
    by tests, to run the worker elsewhere or skip installation.
    """

    def __init__(self, workerSettings: worker.WorkerSettings | None = None,
                 installer: DependencyInstaller | None = None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        engine.engineRoot()
        self._workerSettings = workerSettings
        self.installer = installer or DependencyInstaller(
            Path(__file__).parent / "Resources" / "requirements.txt")

    def getParameterNode(self) -> NeuroADParameterNode:
        return NeuroADParameterNode(super().getParameterNode())

    @property
    def workerSettings(self) -> worker.WorkerSettings:
        """The explicit settings, else a configured worker Python (run from Slicer's startup
        environment, so that Slicer's Python paths do not leak into it), else PythonSlicer."""
        if self._workerSettings is not None:
            return self._workerSettings
        custom = qt.QSettings().value(WORKER_PYTHON_SETTING, "")
        if custom:
            return worker.WorkerSettings([custom], baseEnvironment=slicer.util.startupEnvironment())
        return worker.WorkerSettings([pythonSlicer()])

    def ensureDependencies(self, confirm: bool = True) -> bool:
        """Install the worker's dependencies into Slicer's Python when the worker uses it."""
        if self._workerSettings is None and qt.QSettings().value(WORKER_PYTHON_SETTING, ""):
            return True  # a separate worker Python brings its own packages
        return self.installer.ensure(confirm)

    def startProcess(self, inputVolume, age: float, sex: str, methods: list[str],
                     brainMask=None, device: str = "auto", options: dict | None = None
                     ) -> runs.SceneRun:
        """Start a run and return it at once; the caller polls it (the GUI does, from a
        timer) and finds the result nodes in `run.results` when it has finished."""
        run = runs.SceneRun(inputVolume, age, sex, methods, brainMask, device, options,
                            self.workerSettings)
        run.start()
        return run

    def process(self, inputVolume, age: float, sex: str, method: str | list[str],
                brainMask=None, device: str = "auto", options: dict | None = None,
                blocking: bool = True, installDependencies: bool = True):
        """Run NeuroAD on a volume node. Blocking (the default): returns the ResultNodes of
        `method` (pseudoHealthy, anomalyMap, segmentation, report, setThreshold()), or a dict
        of them when `method` is a list; raises runs.RunError on failure, without dialogs.
        Non-blocking: returns the started run (see startProcess).

        A longitudinal method takes a patient's visits: `inputVolume` and `age` are then
        lists (volumes in scan order, the age at each), and the blocking call returns one
        ResultNodes per visit (results.setThresholdOfVisits steps them with one threshold)."""
        if isinstance(inputVolume, list | tuple):
            return self._processVisits(list(inputVolume), age, sex, method, device, options,
                                       blocking, installDependencies)
        methods = [method] if isinstance(method, str) else list(method)
        problems = engine.requestProblems(inputVolume is not None, age, sex, methods,
                                          choices=engine.methodChoices())
        if problems:
            raise ValueError("; ".join(problems))
        if installDependencies and not self.ensureDependencies():
            raise RuntimeError("NeuroAD's dependencies are not installed.")
        if not blocking:
            return self.startProcess(inputVolume, age, sex, methods, brainMask, device, options)
        run = runs.SceneRun(inputVolume, age, sex, methods, brainMask, device, options,
                            self.workerSettings)
        runs.runToCompletion(run, idle=slicer.app.processEvents, onEvent=_logEvent)
        return run.results[method] if isinstance(method, str) else run.results

    def _processVisits(self, volumes: list, ages, sex: str, method: str, device: str,
                       options: dict | None, blocking: bool, installDependencies: bool):
        ages = list(ages) if isinstance(ages, list | tuple) else [ages]
        problems = [problem for volume, age in zip(volumes, ages, strict=False)
                    for problem in engine.requestProblems(volume is not None, age, sex,
                                                          [method],
                                                          choices=engine.methodChoices())]
        if len(ages) != len(volumes) or not volumes:
            problems.insert(0, f"give one age per visit ({len(volumes)} volumes, "
                               f"{len(ages)} ages)")
        if method not in engine.registry().LONGITUDINAL_METHODS:
            problems.append(f"{method} reads one scan at a time; for visits choose "
                            f"{', '.join(engine.registry().LONGITUDINAL_METHODS)}")
        if problems:
            raise ValueError("; ".join(dict.fromkeys(problems)))
        if installDependencies and not self.ensureDependencies():
            raise RuntimeError("NeuroAD's dependencies are not installed.")
        run = runs.VisitsSceneRun(volumes, ages, sex, method, device, options,
                                  self.workerSettings)
        if not blocking:
            run.start()
            return run
        runs.runToCompletion(run, idle=slicer.app.processEvents, onEvent=_logEvent)
        return run.visitResults

    def runBatch(self, cases, methods: str | list[str], outDir: str | os.PathLike,
                 device: str = "auto", options: dict | None = None, blocking: bool = True,
                 installDependencies: bool = True, cluster: str | None = None,
                 clusterConfig: str | os.PathLike | None = None):
        """Run methods on files listed in a CSV table (path, age, sex[, brain_mask, case]) or
        given as dicts with those keys, without loading them into the scene: each case into
        outDir/<case>/, finished cases skipped, a failing case never stopping the others. By
        default one worker runs the cases one after another, its models loaded once; with
        `cluster` (as `neuroad batch --cluster`: "local:N" worker processes here, a scheduler
        address "tcp://host:8786", a scheduler file "scheduler.json", or "slurm" with
        `clusterConfig`, a YAML or TOML file) the engine runs them on a Dask cluster, and
        cancelling kills it at once (finished cases stay; running again resumes). Blocking:
        returns the path of outDir/summary.csv, logging each case and the batch's progress;
        non-blocking: the started BatchRun (or ClusterBatchRun)."""
        methods = [methods] if isinstance(methods, str) else list(methods)
        if installDependencies and not self.ensureDependencies():
            raise RuntimeError("NeuroAD's dependencies are not installed.")
        if cluster is None:
            run = runs.BatchRun(cases, methods, outDir, device, options, self.workerSettings)
        else:
            run = runs.ClusterBatchRun(cases, methods, outDir, cluster, clusterConfig, device,
                                       options, self.workerSettings)
        if not blocking:
            run.start()
            return run
        runs.runToCompletion(run, idle=slicer.app.processEvents, onEvent=_logEvent)
        return run.summaryPath

    def recalibrate(self, method: str, controls: str | os.PathLike,
                    options: dict | None = None, device: str = "auto", blocking: bool = True,
                    installDependencies: bool = True):
        """Recalibrate a method on a site's own healthy controls (a folder with
        participants.csv, `subject,age,sex,file`, and the scans), as `neuroad prepare-cohort`,
        `neuroad calibrate METHOD --split all` and `neuroad models import` do: the method's
        healthy threshold and normative statistics measured again on every control, at its
        bundle's options or `options` over them, and the new bundle in the model store, where
        it serves the method from then on. Blocking: returns the imported bundle's folder;
        non-blocking: the started RecalibrationRun."""
        if installDependencies and not self.ensureDependencies():
            raise RuntimeError("NeuroAD's dependencies are not installed.")
        run = runs.RecalibrationRun(method, controls, options, device, self.workerSettings)
        if not blocking:
            run.start()
            return run
        runs.runToCompletion(run, idle=slicer.app.processEvents, onEvent=_logEvent)
        return run.bundle

    def showResult(self, inputVolume, result: ResultNodes, opacity: float = 0.6,
                   pseudoHealthyBackground: bool = False) -> None:
        """Show one method's map over the input (or its pseudo-healthy image) in the slice
        views, with its segmentation and no other NeuroAD segmentation."""
        background = result.pseudoHealthy if pseudoHealthyBackground else inputVolume
        slicer.util.setSliceViewerLayers(background=background, foreground=result.anomalyMap,
                                         foregroundOpacity=opacity)
        for segmentation in slicer.util.getNodesByClass("vtkMRMLSegmentationNode"):
            if segmentation.GetAttribute("NeuroAD.method") is not None:
                display = segmentation.GetDisplayNode()
                display.RemoveAllViewNodeIDs()
                display.SetVisibility(segmentation is result.segmentation)

    def showComparison(self, inputVolume, results: list[ResultNodes],
                       opacity: float = 0.6, consensus=None, backgrounds: list | None = None
                       ) -> None:
        """A layout with one linked slice view per method: the input under each method's map
        and segmentation, all at the threshold the results currently have; and, given the
        run's consensus volume, a last view of it (how many methods flag each voxel).
        `backgrounds`: each view's own volume (a longitudinal run's visits) instead of the
        input."""
        backgrounds = backgrounds or [inputVolume] * len(results)
        layoutManager = slicer.app.layoutManager()
        layoutNode = layoutManager.layoutLogic().GetLayoutNode()
        labels = [result.method for result in results] + (["consensus"] if consensus else [])
        description = layout.compareLayoutXml(labels)
        if layoutNode.IsLayoutDescription(layout.COMPARE_LAYOUT_ID):
            layoutNode.SetLayoutDescription(layout.COMPARE_LAYOUT_ID, description)
        else:
            layoutNode.AddLayoutDescription(layout.COMPARE_LAYOUT_ID, description)
        layoutManager.setLayout(layout.COMPARE_LAYOUT_ID)
        for name, result, background in zip(layout.compareViewNames(len(results)), results,
                                            backgrounds, strict=True):
            sliceWidget = layoutManager.sliceWidget(name)
            composite = sliceWidget.mrmlSliceCompositeNode()
            composite.SetBackgroundVolumeID(background.GetID())
            composite.SetForegroundVolumeID(result.anomalyMap.GetID())
            composite.SetForegroundOpacity(opacity)
            composite.SetLinkedControl(True)
            display = result.segmentation.GetDisplayNode()
            display.SetVisibility(True)
            display.SetDisplayableOnlyInView(sliceWidget.mrmlSliceNode().GetID())
            sliceWidget.sliceLogic().FitSliceToAll()
        if consensus is not None:
            sliceWidget = layoutManager.sliceWidget(layout.compareViewNames(len(labels))[-1])
            composite = sliceWidget.mrmlSliceCompositeNode()
            composite.SetBackgroundVolumeID(inputVolume.GetID())
            composite.SetForegroundVolumeID(consensus.GetID())
            composite.SetForegroundOpacity(opacity)
            composite.SetLinkedControl(True)
            sliceWidget.sliceLogic().FitSliceToAll()


def _logEvent(event: dict) -> None:
    kind = event.get("event")
    if kind in ("stage", "log"):
        logging.info("NeuroAD: %s", event.get("stage") or event.get("message"))
    elif kind == "case":
        logging.info("NeuroAD: %s", runs.caseLine(event))
    elif kind == "batch":
        logging.info("NeuroAD: %s", runs.RunProgress.fromBatchEvent(event).text())


class NeuroADTest(ScriptedLoadableModuleTest):
    """Runs in Slicer's test factory: the live threshold on a small synthetic map, then the
    bundled demo case through the real worker and the bundled zscore model."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_ThresholdFollowsTheMap()
        self.setUp()
        self.test_DemoCaseGivesResultNodes()

    def test_ThresholdFollowsTheMap(self) -> None:
        import numpy as np
        from NeuroADSlicerLib import mrml

        scene = slicer.mrmlScene
        ramp = np.arange(8 * 9 * 10, dtype=np.float32).reshape(8, 9, 10)
        volume = mrml.volumeNodeFromArray(scene, ramp, "ramp")
        anomalyMap = mrml.volumeNodeFromArray(scene, ramp / ramp.max(), "map", volume)
        segmentation = mrml.createAnomalySegmentation(scene, "anomaly", volume)
        live = mrml.LiveThreshold(anomalyMap, segmentation)
        for threshold in (0.25, 0.5, 0.9):
            self.assertEqual(live.update(threshold), int((ramp / ramp.max() > threshold).sum()))
            segment = mrml.segmentArray(segmentation, volume)
            self.assertEqual(int(segment.sum()), live.voxelCount)

    def test_DemoCaseGivesResultNodes(self) -> None:
        installer = DependencyInstaller(Path(__file__).parent / "Resources" / "requirements.txt")
        if installer.missing():
            self.skipTest("NeuroAD's Python dependencies are not installed: "
                          + ", ".join(installer.missing()))
        path, age, sex = engine.demoCase()
        volume = slicer.util.loadVolume(str(path))
        result = NeuroADLogic(installer=installer).process(volume, age, sex, "zscore",
                                                           device="cpu")
        self.assertIn(volume.GetName(), result.anomalyMap.GetName())
        self.assertEqual(result.anomalyMap.GetImageData().GetDimensions(),
                         volume.GetImageData().GetDimensions())
        self.assertEqual(result.segmentation.GetAttribute("NeuroAD.model.id"),
                         result.report["model"]["id"])
        atCalibration = result.liveThreshold.voxelCount
        self.assertGreater(atCalibration, 0)
        self.assertLess(result.setThreshold(2 * result.calibratedThreshold), atCalibration)
