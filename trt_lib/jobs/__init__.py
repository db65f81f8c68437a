"""Build jobs: the queue with progress and cancel, and the export + build + record pipeline they run."""
