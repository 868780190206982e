"""The package version (one place: the root package, the HTML report and the self-check read it)."""

__version__ = "0.1.0"
