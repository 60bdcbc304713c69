"""zpool: a drop-in replacement for multiprocessing.Pool on a ZeroMQ cluster."""

from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
version = {}
for line in (here / "zpool" / "__init__.py").read_text().splitlines():
    if line.startswith("__version__"):
        exec(line, version)

setup(
    name="zpool",
    version=version["__version__"],
    description="A drop-in replacement for multiprocessing.Pool on a ZeroMQ cluster with a Python scheduler",
    long_description=(here / "README.md").read_text(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["zpool", "zpool.*"]),
    package_data={"zpool": ["py.typed"]},
    python_requires=">=3.9",
    install_requires=["pyzmq>=25", "dill>=0.3.6", "numpy>=1.22", "psutil>=5.9"],
    extras_require={
        # ipykernel and jupyter_client: the tests run zpool in a real Jupyter kernel;
        # networkx: examples/dag_dependencies.py, which a test runs, builds its graph with it.
        # hypothesis: tests/failure/test_fuzz.py generates the messages it throws at the sockets.
        # tqdm, matplotlib: the progress bars' and timelines' tests (the "progress" and "timeline" extras).
        # mpi4py: tasks of engines started by the mpi launcher talk MPI (tests/integration/test_launchers.py).
        "test": [
            "pytest>=7",
            "pytest-timeout>=2.1",
            "ipykernel>=6",
            "jupyter_client>=7",
            "networkx>=2.6",
            "hypothesis>=6.50",
            "tqdm>=4.60",
            "matplotlib>=3.5",
            "mpi4py>=3.1",
        ],
        # Progress bars: map(..., progress=True), AsyncResult.wait_interactive().
        "progress": ["tqdm>=4.60"],
        # Timelines: AsyncResult.timeline(), Pool.timeline().
        "timeline": ["matplotlib>=3.5"],
        # The documentation site (tox -e docs): Sphinx, Markdown pages (MyST), numpydoc docstrings.
        "docs": ["sphinx>=7", "myst-parser>=2", "numpydoc>=1.6", "furo>=2023.9"],
        # The peers that benchmarks/bench_core.py compares zpool with, each when installed
        # (adapters in benchmarks/_peers.py); zpool itself never imports them.
        # scipy and emcee: the real clients of figure 10 (loops of small maps), benchmarks/_clients.py.
        "bench": ["mpire", "loky", "ray", "dask[distributed]", "ipyparallel", "scipy", "emcee"],
    },
    entry_points={"console_scripts": ["zpool = zpool.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Operating System :: POSIX",
        "Topic :: System :: Distributed Computing",
    ],
)
