"""The package version, in a leaf module: fastrnn/__init__.py, checkpoint headers, show_config,
``fastrnn --version`` and pyproject.toml (setuptools reads it statically) all take it from here."""
__version__ = "0.1.0"
