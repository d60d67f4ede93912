"""Build hook: ship the packages that ``[tool.setuptools.package-dir]`` maps from outside ``zoo/`` and ``plugins/``.

``[tool.setuptools.packages.find]`` (pyproject.toml) finds every package under ``zoo/`` and ``plugins/``, so a
plugin costs no line of packaging. It cannot find ``zoo.suites`` and ``zoo.configs``, which a checkout keeps at
its root (``benchmarks/``, ``configs/``) and a wheel ships inside the package; they are added here. Everything
else is in pyproject.toml.
"""

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPy(build_py):
    """``build_py`` that also builds every package ``package-dir`` names (``zoo.suites``, ``zoo.configs``)."""

    def finalize_options(self) -> None:
        super().finalize_options()
        mapped = [name for name in self.distribution.package_dir or {} if name and name not in self.packages]
        self.packages = [*self.packages, *mapped]


setup(cmdclass={"build_py": BuildPy})
