"""Mirrors modules/shared_cmd_options.py: ``cmd_opts`` parsed once from the command line by
``cmd_args.parser`` (line 13). The stand-in parses no arguments (the real defaults); a test starts the
stand-in with flags by copying ``parser.parse_args(argv)`` into this same object, so that every module
that imported it sees them, as in the WebUI."""

from modules import cmd_args

parser = cmd_args.parser

cmd_opts = parser.parse_args([])
