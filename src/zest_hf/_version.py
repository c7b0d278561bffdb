"""The package version, in a leaf module so that every other module can read it without importing the package."""

__version__ = "0.2.0"
