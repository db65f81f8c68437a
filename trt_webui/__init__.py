"""The WebUI adapter: the only package besides ``scripts/`` that imports the WebUI's ``modules``.

It turns WebUI objects (the loaded checkpoint, the processing object, settings) into ``trt_lib`` calls and
registers the sd_unet provider, the TensorRT tab, the settings and the API routes.
"""
