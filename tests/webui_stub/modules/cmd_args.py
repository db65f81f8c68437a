"""Mirrors modules/cmd_args.py for the flags of the stand-in's ``cmd_opts``, with the real definitions:
``--skip-install`` (line 18), ``--no-half`` (30), ``--medvram`` (39), ``--lowvram`` (41), ``--freeze-settings``
(82), ``--api``, ``--api-auth``, ``--api-log`` and ``--nowebui`` (101-104, the last read by the stand-in's ``Api``
and ``webui.py`` as in the WebUI), ``--no-gradio-queue`` (115), ``--no-hashing`` (117)."""

import argparse

parser = argparse.ArgumentParser()

parser.add_argument("--skip-install", action='store_true', help="launch.py argument: skip installation of packages")
parser.add_argument("--no-half", action='store_true', help="do not switch the model to 16-bit floats")
parser.add_argument("--medvram", action='store_true', help="enable stable diffusion model optimizations for "
                                                          "sacrificing a little speed for low VRM usage")
parser.add_argument("--lowvram", action='store_true', help="enable stable diffusion model optimizations for "
                                                          "sacrificing a lot of speed for very low VRM usage")
parser.add_argument("--freeze-settings", action='store_true', help="disable editing of all settings globally",
                    default=False)
parser.add_argument("--api", action='store_true', help="use api=True to launch the API together with the webui "
                                                      "(use --nowebui instead for only the API)")
parser.add_argument("--api-auth", type=str, help='Set authentication for API like "username:password"; or '
                                                 'comma-delimit multiple like "u1:p1,u2:p2,u3:p3"', default=None)
parser.add_argument("--api-log", action='store_true', help="use api-log=True to enable logging of all API requests")
parser.add_argument("--nowebui", action='store_true', help="use api=True to launch the API instead of the webui")
parser.add_argument("--no-gradio-queue", action='store_true', help="Disables gradio queue; causes the webpage to use "
                    "http requests instead of websockets; was the default in earlier versions")
parser.add_argument("--no-hashing", action='store_true', help="disable sha256 hashing of checkpoints to help "
                    "loading performance", default=False)
