"""The aiohttp OCI gateway that serves augmented images under ``/v2/wt/<token>/...``."""
