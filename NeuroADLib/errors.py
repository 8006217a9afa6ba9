"""Error types of the engine and the process exit codes they map to.

Every failure a user can cause or meet has its own type, so that the command line, the worker
and the Slicer module can tell the user what went wrong and what to do, and scripts can act on
the exit code.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_BAD_INPUT = 3
EXIT_MODEL = 4
EXIT_OUT_OF_MEMORY = 5
EXIT_CANCELLED = 6
EXIT_OUTPUT = 7
EXIT_CLUSTER = 8


class NeuroADError(Exception):
    """Base class of every error the engine raises on purpose."""

    exit_code = EXIT_INTERNAL


class UsageError(NeuroADError):
    """The command or request itself is malformed (a missing field, a missing argument)."""

    exit_code = EXIT_USAGE


class InputError(NeuroADError):
    """The input image or a covariate is missing, unreadable or not a usable brain MRI."""

    exit_code = EXIT_BAD_INPUT


class CorruptFileError(InputError):
    """An input file is truncated or damaged (its header reads, its voxel data does not)."""


class ImplausibleVolumeError(InputError):
    """The volume's geometry (voxel size, field of view, voxel count, aspect) is not what a
    head MRI can be: often a header in the wrong unit, or a volume too small to hold a brain."""


class BrainMaskError(InputError):
    """A brain mask with another geometry than the scan's, or that marks no brain-sized
    region."""


class DicomSeriesError(InputError):
    """A DICOM folder that does not hold exactly one complete, consistent series."""


class CaseTableError(InputError):
    """A batch case table that is empty, lacks columns, or repeats or misnames a case."""


class OptionError(UsageError):
    """A method option that is unknown, of the wrong type, or outside its valid range."""


class ModelError(NeuroADError):
    """A model bundle is missing, corrupt or does not match what the run needs."""

    exit_code = EXIT_MODEL


class NotEnoughMemory(NeuroADError):
    """The run would need more memory than the machine has available (refused before work)."""

    exit_code = EXIT_OUT_OF_MEMORY


class OutputError(NeuroADError):
    """The output location cannot be written."""

    exit_code = EXIT_OUTPUT


class PreprocessingError(NeuroADError):
    """Preprocessing failed on an input that passed the input checks (e.g. registration)."""

    exit_code = EXIT_BAD_INPUT


class Cancelled(NeuroADError):
    """The run was cancelled (SIGTERM, a stop file, or the user)."""

    exit_code = EXIT_CANCELLED


class ClusterError(NeuroADError):
    """The Dask cluster of a batch cannot be used: Dask not installed, the scheduler not
    reachable, or the scheduler lost while the batch ran (finished cases are kept)."""

    exit_code = EXIT_CLUSTER
