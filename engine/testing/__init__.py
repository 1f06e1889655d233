"""Test equipment shared by ``tests/`` and ``scripts/``: the CLI in a process, the DEM job the
reliability tests use, the oracle an output is compared with, real proxy processes, and the
outage and fault runs that the soak scripts repeat at length.

Ships with the package so a script can ``from engine.testing import ...`` without putting
``tests/`` on ``sys.path``. Nothing here imports pytest; engine code never imports this.
"""
