"""The Slicer side of NeuroAD that needs neither the Slicer application nor Qt.

`engine` finds the NeuroADLib engine and reads its method registry and model store without
importing anything heavy; `worker` starts and reads a worker process; `runs` turns scene nodes
into a worker request and drives it (progress, cancel, batches); `results` loads a run's
outputs as nodes; `mrml` holds the MRML-facing helpers (volume nodes and files, the live
threshold, display, provenance); `layout` describes the Compare layout; `dependencies` says
what must be installed. All of it runs against the MRML classes of the `slicer-core` wheel,
so it is tested outside Slicer.
"""
