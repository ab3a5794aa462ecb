"""Kept for tools that still call setup.py; all metadata is declarative, in setup.cfg."""

from setuptools import setup

setup()
