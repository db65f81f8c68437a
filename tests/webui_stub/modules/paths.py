"""Mirrors modules/paths.py and modules/paths_internal.py: where the WebUI keeps models and data.

The test harness points these at a temporary folder before the extension is loaded.
"""

import os

script_path = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
data_path = script_path
models_path = os.path.join(data_path, "models")
extensions_dir = os.path.join(data_path, "extensions")
