"""Package discovery; every other setting is in pyproject.toml.

``backends/`` and ``operators/`` sit at the repository top but install as ``fixedpoint_ir.backends``
and ``fixedpoint_ir.operators``. ``[tool.setuptools.packages.find]`` cannot add that prefix, so the
package list is computed here: every folder under the three roots (``__pycache__`` aside) is a
package, so new subpackages and data folders such as ``fixedpoint_ir/weights`` land in the wheel
without a list to edit (``tests/test_packaging.py`` checks a built wheel against the tree).
"""
from setuptools import find_namespace_packages, setup

#: installed package name -> folder in the repository
ROOTS = {
    "fixedpoint_ir": "fixedpoint_ir",
    "fixedpoint_ir.backends": "backends",
    "fixedpoint_ir.operators": "operators",
}


def discover_packages(roots: dict[str, str]) -> list[str]:
    """Each root and every folder below it, named under the root's installed name.

    Namespace discovery, so that data folders (no ``__init__.py``) are packages too and their
    files ship as package data, which is what setuptools asks of data folders.
    """
    found = []
    for root, folder in roots.items():
        subs = find_namespace_packages(folder, exclude=["__pycache__", "*.__pycache__"])
        found += [root, *(f"{root}.{sub}" for sub in subs)]
    return found


setup(packages=discover_packages(ROOTS), package_dir=ROOTS)
