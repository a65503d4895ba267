"""Networks, checkpoint detection and loading.

The public entry point is `load_checkpoint` (see `loading.py`), which returns a `ModelBundle`
with the UNet, VAE and text encoder of a single-file checkpoint.
"""
