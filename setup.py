from setuptools import find_packages, setup

# twisted/plugins has no __init__.py on purpose (it is a namespace shared with
# every other Twisted plugin), so it is listed by hand.
setup(packages=find_packages(exclude=["tests", "tests.*"]) + ["twisted.plugins"])
