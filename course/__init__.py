"""How LLMs Are Made (From Scratch): the code the chapters teach, one module per notebook.

The chNN_*.py modules are generated from the notebooks by `python -m course.export` (do not edit
them); infra.py (files, downloads, errors) and export.py are written by hand.
"""
