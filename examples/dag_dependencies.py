"""Run a random task graph (a DAG) on zpool with ``after=`` dependencies, and check the schedule.

Builds a random directed acyclic graph with networkx (by default 32 nodes and
96 edges), submits one task per node in topological order, each with
``after=`` the results of its predecessors, waits for all of them, then
verifies from each result's metadata that every task started only after all
its predecessors had completed. With matplotlib installed, ``--plot FILE``
draws the schedule: each node at its start time (x) and run time (y),
coloured by the engine that ran it, with the graph's edges.

Run::

    python examples/dag_dependencies.py                 # 32 nodes, 96 edges
    python examples/dag_dependencies.py --nodes 64 --edges 200 --plot dag.png
"""

from __future__ import annotations

import argparse
import random
import time

import networkx as nx

from zpool import Pool


def work(node: int, duration: float) -> int:
    """A task: pretend to compute for `duration` seconds."""
    time.sleep(duration)
    return node


def random_dag(nodes: int, edges: int, seed: int) -> nx.DiGraph:
    """A random DAG: edges only go from a lower-numbered node to a higher one."""
    rng = random.Random(seed)
    graph = nx.DiGraph()
    graph.add_nodes_from(range(nodes))
    possible = nodes * (nodes - 1) // 2
    edges = min(edges, possible)
    while graph.number_of_edges() < edges:
        a, b = sorted(rng.sample(range(nodes), 2))
        graph.add_edge(a, b)
    return graph


def submit_graph(pool: Pool, graph: nx.DiGraph, seed: int) -> dict[int, object]:
    """One task per node, in topological order, each after its predecessors."""
    rng = random.Random(seed)
    results: dict[int, object] = {}
    for node in nx.topological_sort(graph):
        parents = [results[p] for p in graph.predecessors(node)]
        results[node] = pool.apply_async(work, (node, rng.uniform(0.01, 0.1)), after=parents)
    return results


def check_schedule(graph: nx.DiGraph, results: dict[int, object]) -> int:
    """Verify that each task started after all its predecessors completed; return the edges checked."""
    checked = 0
    for parent, child in graph.edges:
        started = results[child].metadata.started
        completed = results[parent].metadata.completed
        if started < completed:
            raise AssertionError(f"task {child} started at {started}, before {parent} completed at {completed}")
        checked += 1
    return checked


def plot(graph: nx.DiGraph, results: dict[int, object], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = min(r.metadata.started for r in results.values())
    pos = {}
    by_engine: dict[int, list[int]] = {}
    for node in graph.nodes:
        md = results[node].metadata
        pos[node] = ((md.started - t0).total_seconds(), (md.completed - md.started).total_seconds())
        by_engine.setdefault(md.engine_id, []).append(node)
    fig, ax = plt.subplots(figsize=(9, 5))
    nx.draw_networkx_edges(graph, pos, ax=ax, alpha=0.25, arrows=True, arrowsize=8)
    palette = plt.get_cmap("tab10")
    for i, (engine_id, nodes) in enumerate(sorted(by_engine.items())):
        nx.draw_networkx_nodes(
            graph, pos, nodelist=nodes, ax=ax, node_color=[palette(i % 10)], node_size=90, label=f"engine {engine_id}"
        )
    nx.draw_networkx_labels(graph, pos, ax=ax, font_size=6)
    ax.set_xlabel("start time (s)")
    ax.set_ylabel("run time (s)")
    ax.set_title(f"{graph.number_of_nodes()} tasks, {graph.number_of_edges()} dependencies")
    ax.tick_params(left=True, bottom=True, labelleft=True, labelbottom=True)
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=32)
    parser.add_argument("--edges", type=int, default=96)
    parser.add_argument("--processes", type=int, default=None)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--plot", metavar="FILE", help="draw the schedule to this PNG (needs matplotlib)")
    args = parser.parse_args(argv)

    graph = random_dag(args.nodes, args.edges, args.seed)
    assert nx.is_directed_acyclic_graph(graph)
    with Pool(args.processes) as pool:
        start = time.perf_counter()
        results = submit_graph(pool, graph, args.seed)
        for ar in results.values():
            ar.get(timeout=120)
        elapsed = time.perf_counter() - start
        checked = check_schedule(graph, results)
        engines = sorted({ar.metadata.engine_id for ar in results.values()})
        print(f"{graph.number_of_nodes()} tasks, {graph.number_of_edges()} dependencies, done in {elapsed:.2f} s")
        print(f"every task started after its predecessors completed ({checked} edges checked)")
        print(f"engines used: {engines}")
        if args.plot:
            plot(graph, results, args.plot)
            print(f"schedule drawn to {args.plot}")


if __name__ == "__main__":
    main()
