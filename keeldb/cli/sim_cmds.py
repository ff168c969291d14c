"""`keeldb sim`: run reference systems in the deterministic simulator.

    keeldb sim --system primary-backup --seed 8812 --faults drop,crash --trace
    keeldb sim --system register --seeds 1000           # a swarm: the seed picks the faults
    keeldb sim --system echo --bench                    # simulated deliveries per second
    keeldb sim --system raft-redis --workload write-skew --isolation snapshot --seeds 20
    keeldb sim --list-faults

Exit codes: 0 every check passed, 3 a check found a violation, 2 bad option.
"""

from __future__ import annotations

from typing import Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from keeldb import limits
from keeldb.cli.app import EXIT_USAGE, EXIT_VIOLATION, app, console, fail, print_json, print_table
from keeldb.errors import UsageError
from keeldb.runtime.sim.faults import SPECS, Fault, parse_faults
from keeldb.testing.cluster import (
    CLIENTS_DEFAULT,
    ISOLATION_DEFAULT,
    SAFETY_TICKS_DEFAULT,
    SYSTEMS,
    SimConfig,
    SimResult,
    bench,
    run_sim,
    workloads_of,
)
from keeldb.testing.redis_workloads import ISOLATIONS, REDIS_WORKLOADS
from keeldb.testing.workloads import WORKLOADS

FAILURES_SHOWN_MAX = 20


@app.command("sim")
def sim(
    system: str = typer.Option("register", "--system", help=f"One of: {', '.join(SYSTEMS)}."),
    seed: int = typer.Option(1, "--seed", help="The seed of a single run."),
    seeds: int = typer.Option(0, "--seeds", help="Run a swarm of this many seeds instead."),
    seed_start: int = typer.Option(1, "--seed-start", help="First seed of a swarm."),
    faults: str | None = typer.Option(None, "--faults",
                                      help="Comma list of faults, 'none' or 'all'; default: "
                                           "the seed picks a subset (swarm testing)."),
    workload: str = typer.Option("register", "--workload",
                                 help=f"One of: {', '.join(WORKLOADS)}; raft-redis: "
                                      f"{', '.join(REDIS_WORKLOADS)}."),
    ticks_max: int = typer.Option(SAFETY_TICKS_DEFAULT, "--ticks-max",
                                  help="Length of the safety phase in ticks (1 tick = 1 ms of "
                                       "virtual time)."),
    clients: int = typer.Option(CLIENTS_DEFAULT, "--clients", help="Concurrent clients."),
    isolation: str = typer.Option(ISOLATION_DEFAULT, "--isolation",
                                  help="raft-redis only: 'watch' (WATCH/MULTI/EXEC) or a TXN "
                                       f"level ({', '.join(ISOLATIONS[1:])})."),
    pipeline: int | None = typer.Option(None, "--pipeline", min=0,
                                        max=limits.sim_pipeline_max,
                                        help="raft-kv: half the clients pipeline bursts of "
                                             "2..N requests on one connection; 0/1: off. "
                                             "Default: limits.sim_pipeline_max for raft-kv, "
                                             "0 for other systems."),
    trace: bool = typer.Option(False, "--trace", help="Print the readable event trace."),
    history_out: str | None = typer.Option(None, "--history-out",
                                           help="Write the single run's history (JSON lines)."),
    as_json: bool = typer.Option(False, "--json", help="Print results as JSON."),
    do_bench: bool = typer.Option(False, "--bench",
                                  help="Measure simulated message deliveries per second."),
    list_faults: bool = typer.Option(False, "--list-faults", help="List the named faults."),
) -> None:
    """Run a system in the simulator: safety phase, liveness phase, checkers."""
    if list_faults:
        _list_faults(as_json)
        return
    if do_bench:
        _bench(as_json)
        return
    if system not in SYSTEMS:
        fail(f"unknown system {system!r}; known: {', '.join(SYSTEMS)}", EXIT_USAGE)
    if not SYSTEMS[system].checkable:
        fail(f"system {system!r} serves no workload: use it with --bench", EXIT_USAGE)
    if workload not in workloads_of(system):
        fail(f"unknown workload {workload!r} for system {system!r}; known: "
             f"{', '.join(workloads_of(system))}", EXIT_USAGE)
    if isolation not in ISOLATIONS or (isolation != ISOLATION_DEFAULT
                                       and SYSTEMS[system].runner is None):
        fail(f"--isolation {isolation!r} is not valid for system {system!r}; raft-redis takes "
             f"{', '.join(ISOLATIONS)}", EXIT_USAGE)
    if ticks_max <= 0 or clients <= 0 or seeds < 0:
        fail("--ticks-max and --clients must be positive, --seeds not negative", EXIT_USAGE)
    try:
        chosen = None if faults is None else parse_faults(faults)
    except UsageError as exc:
        fail(exc.message, EXIT_USAGE)
    if pipeline is None:
        pipeline = limits.sim_pipeline_max if system == "raft-kv" else 0
    if seeds:
        failed = _swarm(system, range(seed_start, seed_start + seeds), chosen, workload,
                        ticks_max, clients, as_json, isolation, pipeline)
    else:
        config = SimConfig(system, seed, chosen, workload, ticks_max, clients=clients,
                           trace=trace, isolation=isolation, pipeline=pipeline)
        result = run_sim(config)
        if history_out:
            with open(history_out, "w", encoding="utf-8") as out:
                out.writelines(_history_lines(result))
        _show_one(result, as_json, trace)
        failed = not result.ok
    if failed:
        raise typer.Exit(EXIT_VIOLATION)


def _history_lines(result: SimResult) -> list[str]:
    from keeldb.check.history import dump_jsonl

    return list(dump_jsonl(result.history))


def _show_one(result: SimResult, as_json: bool, trace: bool) -> None:
    if as_json:
        out = result.summary()
        if trace:
            out["trace"] = result.trace
        print_json(out)
        return
    if trace:
        for line in result.trace:
            console.print(line, highlight=False, markup=False, soft_wrap=True)
    c = result.config
    print_table(f"sim {c.system} seed {c.seed}", ["field", "value"], [
        ("faults", result.plan.names()),
        ("faults exercised", ", ".join(f"{k}x{v}" for k, v in result.faults_exercised.items())
         or "-"),
        ("operations", len(result.history)),
        ("virtual time", f"{result.virtual_ns / 1e6:.1f} ms"),
        ("events", result.events),
        ("messages delivered", result.stats.messages_delivered),
        ("crashes / restarts", f"{result.stats.crashes} / {result.stats.restarts}"),
        ("digest", result.digest),
        ("verdict", "ok" if result.ok else f"FAILED ({len(result.violations)} violations)"),
    ])
    for v in result.violations[:FAILURES_SHOWN_MAX]:
        console.print(f"[red]violation[/] {v}", highlight=False, soft_wrap=True)
    if not result.ok:
        # one unwrapped line, so it can be copied (or grepped) whole
        console.print(f"reproduce: {result.repro}", highlight=False, markup=False,
                      soft_wrap=True)


def _swarm(system: str, seeds: range, faults: tuple[Fault, ...] | None, workload: str,
           ticks_max: int, clients: int, as_json: bool,
           isolation: str = ISOLATION_DEFAULT, pipeline: int = 0) -> bool:
    failures: list[SimResult] = []
    exercised: dict[str, int] = {}
    ops = 0
    progress = Progress(TextColumn("[bold]sim {task.fields[system]}"), BarColumn(),
                        MofNCompleteColumn(), TextColumn("failed {task.fields[failed]}"),
                        TimeElapsedColumn(), console=console, disable=as_json, transient=False)
    with progress:
        task = progress.add_task("swarm", total=len(seeds), system=system, failed=0)
        for s in seeds:
            r = run_sim(SimConfig(system, s, faults, workload, ticks_max, clients=clients,
                                  isolation=isolation, pipeline=pipeline))
            ops += len(r.history)
            for name in r.faults_exercised:
                exercised[name] = exercised.get(name, 0) + 1
            if not r.ok:
                failures.append(r)
            progress.update(task, advance=1, failed=len(failures))
    summary: dict[str, Any] = {
        "system": system, "seeds": len(seeds), "first_seed": seeds.start,
        "failed": len(failures), "operations": ops,
        "seeds_exercising_fault": dict(sorted(exercised.items())),
        "failures": [{"seed": r.config.seed, "repro": r.repro,
                      "violation": str(r.violations[0])} for r in failures],
    }
    if as_json:
        print_json(summary)
        return bool(failures)
    print_table(f"swarm: {system}", ["seeds run", "passed", "failed", "operations"],
                [(len(seeds), len(seeds) - len(failures), len(failures), ops)])
    print_table("faults exercised", ["fault", "seeds"],
                sorted(exercised.items(), key=lambda kv: (-kv[1], kv[0])))
    if failures:
        print_table("failures", ["seed", "first violation"],
                    [(r.config.seed, str(r.violations[0])[:100])
                     for r in failures[:FAILURES_SHOWN_MAX]])
        for r in failures[:FAILURES_SHOWN_MAX]:
            console.print(f"reproduce: {r.repro}", highlight=False, markup=False,
                          soft_wrap=True)
        if len(failures) > FAILURES_SHOWN_MAX:
            console.print(f"... and {len(failures) - FAILURES_SHOWN_MAX} more (use --json)")
    return bool(failures)


def _list_faults(as_json: bool) -> None:
    rows = [(f.value, f"{SPECS[f].p_min:g}-{SPECS[f].p_max:g}", SPECS[f].doc) for f in Fault]
    if as_json:
        print_json([{"fault": r[0], "probability": r[1], "doc": r[2]} for r in rows])
        return
    print_table("simulator faults", ["fault", "probability knob", "what it does"], rows)


def _bench(as_json: bool) -> None:
    b = bench()
    if as_json:
        print_json({"deliveries": b.deliveries, "wall_s": b.wall_s, "cpu_s": b.cpu_s,
                    "virtual_ms": b.virtual_ms, "deliveries_per_s": b.per_second,
                    "deliveries_per_cpu_s": b.per_cpu_second})
        return
    print_table("simulator speed (echo system, no faults)", ["field", "value"], [
        ("virtual time", f"{b.virtual_ms} ms"), ("messages delivered", b.deliveries),
        ("wall time", f"{b.wall_s:.3f} s"), ("deliveries per second", f"{b.per_second:,.0f}"),
        ("CPU time", f"{b.cpu_s:.3f} s"),
        ("deliveries per CPU second", f"{b.per_cpu_second:,.0f}"),
    ])
