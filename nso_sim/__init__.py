"""nso-sim: a stand-in for Cisco NSO System Installs, used by tests, benchmarks and the demo.

Never imports ``repo_server`` or ``agent``: those meet the simulator only through the files,
commands and network ports a real NSO host offers.
"""

__all__ = ["__version__"]
__version__ = "0.1.0"
