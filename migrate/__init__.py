"""comfy-migrate: move ComfyUI models into one shared store, reversibly."""

__version__ = "0.1.0"
