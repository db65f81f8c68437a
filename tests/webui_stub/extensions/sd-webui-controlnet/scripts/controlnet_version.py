"""Mirrors sd-webui-controlnet v1.1.455 scripts/controlnet_version.py: the version string (line 1)."""
version_flag = 'v1.1.455'
