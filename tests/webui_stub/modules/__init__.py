"""A small stand-in of AUTOMATIC1111 WebUI v1.10.1's ``modules`` package, for testing the extension on CPU.

Each file mirrors the WebUI file of the same name where the extension touches it (names, signatures,
call order, error handling); everything else is left out. Nothing heavy is imported at package import.
"""
