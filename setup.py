"""Package layout only (metadata is in pyproject.toml): ``configs/`` lives at the repository root
and installs as the subpackage ``diffjax.configs``, so a plain ``pip install .`` (or from git)
carries every experiment config and nothing depends on the repository's folders."""
from setuptools import find_packages, setup

config_packages = ["diffjax.configs"] + [f"diffjax.configs.{p}" for p in find_packages("configs")]
setup(packages=find_packages(include=["diffjax", "diffjax.*"]) + config_packages,
      package_dir={"diffjax.configs": "configs"})
