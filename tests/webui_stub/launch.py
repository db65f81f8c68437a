"""Mirrors the WebUI's launch.py (modules/launch_utils.py) as extensions' install.py use it:
``is_installed`` checks metadata and import specs; ``run_pip`` runs ``python -m pip ... --prefer-binary``
in a subprocess and raises RuntimeError with pip's output when it fails.

``python`` is ``sys.executable`` unless ``WEBUI_STUB_PIP_PYTHON`` names another program (tests use one that
records the call and fails or succeeds on request).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
import subprocess
import sys

# cmd_args.py:85: --ui-settings-file defaults to <data dir>/config.json, the data dir to the WebUI's folder, the
# one it runs in (here: the installer's working directory)
args = argparse.Namespace(skip_install=False, ui_settings_file=os.path.join(os.getcwd(), "config.json"))
python = os.environ.get("WEBUI_STUB_PIP_PYTHON", sys.executable)
index_url = os.environ.get("INDEX_URL", "")


def run(command: str, desc: str | None = None, errdesc: str | None = None, custom_env: dict | None = None,
        live: bool = False) -> str:
    if desc is not None:
        print(desc)
    result = subprocess.run(command, shell=True, env=os.environ if custom_env is None else custom_env,
                            encoding="utf8", errors="ignore", capture_output=True)
    if result.returncode != 0:
        error_bits = [f"{errdesc or 'Error running command'}.", f"Command: {command}",
                      f"Error code: {result.returncode}"]
        if result.stdout:
            error_bits.append(f"stdout: {result.stdout}")
        if result.stderr:
            error_bits.append(f"stderr: {result.stderr}")
        raise RuntimeError("\n".join(error_bits))
    return result.stdout or ""


def is_installed(package: str) -> bool:
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        try:
            spec = importlib.util.find_spec(package)
        except ModuleNotFoundError:
            return False
        return spec is not None
    return dist is not None


def run_pip(command: str, desc: str | None = None, live: bool = False) -> str | None:
    if args.skip_install:
        return None
    index_url_line = f" --index-url {index_url}" if index_url != "" else ""
    return run(f'"{python}" -m pip {command} --prefer-binary{index_url_line}', desc=f"Installing {desc}",
               errdesc=f"Couldn't install {desc}", live=live)


def run_extension_installer(extension_dir: str) -> None:
    """launch_utils.run_extension_installer: install.py runs in a subprocess; its failure is only reported."""
    path_installer = os.path.join(extension_dir, "install.py")
    if not os.path.isfile(path_installer):
        return
    try:
        env = os.environ.copy()
        script_path = os.path.dirname(os.path.abspath(__file__))
        env["PYTHONPATH"] = f"{script_path}{os.pathsep}{env.get('PYTHONPATH', '')}"
        stdout = run(f'"{sys.executable}" "{path_installer}"',
                     errdesc=f"Error running install.py for extension {extension_dir}", custom_env=env).strip()
        if stdout:
            print(stdout)
    except Exception as e:
        from modules import errors

        errors.report(str(e))
