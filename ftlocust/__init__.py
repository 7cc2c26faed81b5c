"""ftlocust: fault-tolerance drills for LLM inference serving, driven by Locust.

Importing the package must not need a GPU, a cluster or NVML: heavy or optional
modules (kubernetes, pynvml) are imported where they are used.
"""

__version__ = "0.1.0"
