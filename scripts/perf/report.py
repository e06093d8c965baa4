"""How the numbers are reported: rates, ratios to the reference row, PASS/FAIL, projections, files.

* ``rate``: ``count / seconds`` in the row's ``unit`` (env steps/s unless stated); ``us_per_step``: wall
  microseconds per batched step (``seconds * batch / count``) for env-step rows.
* ``ratio``: rate / the reference row's rate (``breakdown``: the phase's share of the iteration; window
  rows: rate / rate at the smallest window). A row's ``reference`` is the id it is divided by; sampler
  and training rows (``reference`` "..., paired in-process") carry their own ratio, the median over rounds
  timed back to back in the row's own process with a raw batch env like that row's
  (``measure.measure_sampler``) or with the library peer doing one iteration's work
  (``measure.measure_train``).
* ``status``: PASS when every target of the row holds (ratio >= min, peak memory <= limit, projected
  hours <= limit, run seconds <= limit), ``FAIL <which>`` otherwise, ``n/a`` without a reference.
* ``projected_h`` (paper rows): (budget env steps at the measured rate with training, the update time
  scaled back where gradient steps were cut) + (the harness's evaluation steps at the sampling rate).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scripts.perf.measure import Job
from scripts.perf.plan import QUIET_HALFCHEETAH

COLUMNS = [
    "id",
    "kind",
    "name",
    "suite",
    "batch",
    "scaling",
    "unit",
    "count",
    "seconds",
    "rate",
    "us_per_step",
    "work",
    "reference",
    "ratio",
    "target",
    "status",
    "projected_h",
    "peak_rss_mb",
    "load_1m",
    "notes",
]


def _sig(x: float, digits: int = 4) -> float:
    """``x`` to ``digits`` significant digits (ratios far below 1 keep their precision)."""
    return float(f"{x:.{digits}g}")


def _blank(**kw: Any) -> dict[str, Any]:
    return {c: "" for c in COLUMNS} | kw


def paper_projection(res: dict[str, Any], scale: float) -> tuple[float, float]:
    """(env steps/s with training at the paper's update cost, projected hours for budget + evaluations)."""
    steps, sampling, update = res["env_steps"], res["sampling_s"], res["update_s"]
    rate = steps / (sampling + update * scale)
    sampling_rate = steps / sampling if sampling > 0 else rate
    hours = (res["budget_steps"] / rate + res["eval_steps"] / sampling_rate) / 3600
    return rate, hours


def finish_rows(jobs: list[Job], results: dict[str, dict[str, Any]], skips: list[dict]) -> list[dict]:
    """One CSV row per job (+ MAML breakdown rows after its training row), then the SKIP rows."""
    rows: dict[str, dict[str, Any]] = {}
    extra: dict[str, list[dict[str, Any]]] = {}
    for job in jobs:
        res = results[job["id"]]
        row = _blank(**{k: job.get(k, "") for k in ("id", "kind", "name", "suite", "batch", "scaling")})
        rows[job["id"]] = row
        if "error" in res:
            row.update(status="ERROR", notes=res["error"])
            continue
        unit = res.get("unit", "env steps/s")
        row.update(
            unit=unit,
            count=res["count"],
            seconds=round(res["seconds"], 3),
            work=res.get("work", ""),
            peak_rss_mb=round(res["peak_rss_mb"], 1),
            load_1m=round(res["load_1m"], 2),
        )
        row["rate"] = round(res["count"] / res["seconds"], 1) if res["seconds"] > 0 else ""
        if unit == "env steps/s" and res["count"]:
            row["us_per_step"] = round(1e6 * res["seconds"] * (job.get("batch") or 1) / res["count"], 1)
        notes = [res.get("notes", "")]
        if job["kind"] == "paper":
            scale = job.get("update_scale", 1.0)
            rate, hours = paper_projection(res, scale)
            row.update(
                rate=round(rate, 1), unit="env steps/s", count=res["env_steps"], projected_h=round(hours, 2)
            )
            row["seconds"] = round(res["sampling_s"] + res["update_s"], 3)
            if scale != 1.0:
                notes.append(f"update time x{scale:g} (gradient steps cut for the measurement, scaled back)")
            notes.append(f"budget {res['budget_steps']:,} steps + {res['eval_steps']:,} evaluation steps")
        if job.get("group", job["id"]) != job["id"]:
            notes.append(f"series {job['group']} in one process (memory peak includes earlier rows)")
        row["notes"] = "; ".join(n for n in notes if n)
        if res.get("phases"):
            total = sum(p[1] for p in res["phases"])
            extra[job["id"]] = [
                _blank(
                    id=f"breakdown/{job['algo']}/{job['suite']}/{name.replace(' ', '-')}",
                    kind="breakdown",
                    name=name,
                    suite=job["suite"],
                    batch=job["batch"],
                    unit="s per iteration",
                    seconds=round(sec, 3),
                    reference=f"{job['id']} (one iteration under cProfile)",
                    ratio=round(sec / total, 3) if total else "",
                    notes=how,
                )
                for name, sec, how in res["phases"]
            ]

    def rate(rid: str) -> float | None:
        r = rows.get(rid)
        return r["rate"] if r and r["rate"] not in ("", 0) else None

    for job in jobs:
        row, ref = rows[job["id"]], job.get("reference", "")
        if row["status"] == "ERROR":
            continue
        row["reference"] = ref
        if ref == "quiet":
            row["reference"] = f"quiet machine {QUIET_HALFCHEETAH:.0f}/s"
            row["ratio"] = _sig(row["rate"] / QUIET_HALFCHEETAH)
        elif "ratio" in results[job["id"]]:  # paired in the row's own process (sampler and training rows)
            row["ratio"] = _sig(results[job["id"]]["ratio"])
            row["reference"] = f"{ref}, paired in-process"
        elif ref in rows and rate(ref) and row["rate"] != "":
            row["ratio"] = _sig(row["rate"] / rate(ref))
        mine, theirs = (results.get(j, {}).get("flops_per_grad_step") for j in (job["id"], ref))
        if mine and theirs and row["ratio"] != "":  # gradient steps of different methods: how much work
            row["notes"] += (
                f"; matmul work per gradient step {mine / 1e6:.0f} MFLOP against the peer's "
                f"{theirs / 1e6:.0f} (torch FlopCounterMode, forward + backward): per unit of work "
                f"{row['ratio'] * mine / theirs:.2f}x the peer"
            )
        _target(job, row)
    out: list[dict[str, Any]] = []
    for rid, row in rows.items():
        out += [row, *extra.get(rid, [])]
    return out + [_blank(**s) for s in skips]


def _target(job: Job, row: dict[str, Any]) -> None:
    checks: list[tuple[str, bool | None]] = []
    ratio = row["ratio"] if row["ratio"] != "" else None
    if job.get("min_ratio") is not None:
        checks.append((f">={job['min_ratio']:g}x ref", None if ratio is None else ratio >= job["min_ratio"]))
    if job.get("max_rss_mb") is not None:
        checks.append((f"rss<={job['max_rss_mb'] / 1024:g}GB", row["peak_rss_mb"] <= job["max_rss_mb"]))
    if job.get("max_hours") is not None:
        checks.append((f"<={job['max_hours']:g}h projected", row["projected_h"] <= job["max_hours"]))
    if not checks:
        return
    row["target"] = ", ".join(name for name, _ in checks)
    failed = [name for name, ok in checks if ok is False]
    unknown = [name for name, ok in checks if ok is None]
    row["status"] = f"FAIL {', '.join(failed)}" if failed else ("n/a (no reference)" if unknown else "PASS")


def run_row(seconds: float, limit: float | None, load: tuple[float, float, float]) -> dict[str, Any]:
    """The whole run's wall time, with its target where the run used full sizes."""
    row = _blank(
        id="run/total",
        kind="run",
        name="perf run",
        unit="s",
        seconds=round(seconds, 1),
        load_1m=round(load[0], 2),
        notes=f"load average at the end {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}",
    )
    if limit is not None:
        row.update(target=f"<={limit:.0f}s", status="PASS" if seconds <= limit else f"FAIL <={limit:.0f}s")
    return row


def write_csv(rows: list[dict[str, Any]], path: Path, columns: list[str] = COLUMNS) -> None:
    """Write ``rows`` under the header ``columns`` to ``path`` atomically (``write_csv_atomic``), creating
    its directory; a missing key is an empty field, a key outside ``columns`` raises ``ValueError``."""
    from benchmark.results import write_csv_atomic  # imported here: env workers re-import modules

    path.parent.mkdir(parents=True, exist_ok=True)
    write_csv_atomic(path, columns, rows)


# -- the scaling table and figure ----------------------------------------------------------------------
SCALING_COLUMNS = ["axis", "value", "what", "method", "rate", "ratio_to_raw", "peak_rss_mb", "id"]


def scaling_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tidy rows of the scaling series: axis (tasks | window), its value, raw / sampler / train, method."""
    out = []
    for r in rows:
        if not r.get("scaling") or r["rate"] == "":
            continue
        axis = r["scaling"]
        value = int(r["id"].rsplit("/N", 1)[1]) if axis == "window" else int(r["batch"])
        out.append(
            {
                "axis": axis,
                "value": value,
                "what": r["kind"],
                "method": r["name"] if r["kind"] != "raw" else "",
                "rate": r["rate"],
                "ratio_to_raw": r["ratio"] if r["kind"] == "sampler" else "",
                "peak_rss_mb": r["peak_rss_mb"],
                "id": r["id"],
            }
        )
    return sorted(out, key=lambda s: (s["axis"], s["what"], s["method"], s["value"]))


def scaling_figure(table: list[dict[str, Any]], path: Path, title: str) -> None:
    """Two panels: env steps/s vs tasks per batch (raw, sampler, training), and vs TrMRL window.

    One colour per method; solid = sampler (black: raw batch env), dashed = training with PPO updates.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    methods = sorted({s["method"] for s in table if s["method"]})
    colour = {m: plt.get_cmap("tab10")(i) for i, m in enumerate(methods)} | {"": "black"}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    for ax, axis, xlabel in ((axes[0], "tasks", "tasks per batch"), (axes[1], "window", "TrMRL window N")):
        series: dict[tuple[str, str], list[tuple[int, float]]] = {}
        for s in table:
            if s["axis"] == axis:
                series.setdefault((s["what"], s["method"]), []).append((s["value"], float(s["rate"])))
        for (what, method), pts in sorted(series.items()):
            xs, ys = zip(*sorted(pts), strict=True)
            label = "raw batch env" if what == "raw" else f"{what}: {method}"
            style = "--" if what == "train" else "-"
            ax.plot(xs, ys, style, marker="o", color=colour[method], label=label)
        values = sorted({s["value"] for s in table if s["axis"] == axis})
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(values, [str(v) for v in values])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:,.0f}"))
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda y, _: f"{y:,.0f}"))
        ax.tick_params(axis="y", which="minor", labelsize=6)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("env steps per second (log scale)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -- console and README ---------------------------------------------------------------------------------
def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"
    return str(v)


def format_table(rows: list[dict[str, Any]]) -> str:
    """The console table: one line per row (id, rate, unit, reference, ratio, target, status, projected
    hours, peak MB, load; cells cut to 60 characters, numbers right-aligned), then every row's notes."""
    columns = [
        ("id", "id"),
        ("rate", "rate"),
        ("unit", "unit"),
        ("reference", "reference"),
        ("ratio", "ratio"),
        ("target", "target"),
        ("status", "status"),
        ("proj. h", "projected_h"),
        ("peak MB", "peak_rss_mb"),
        ("load", "load_1m"),
    ]
    head = [h for h, _ in columns]
    keys = [k for _, k in columns]
    body = [[_cell(r.get(k, ""))[:60] for k in keys] for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    numeric = {1, 4, 7, 8, 9}

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in numeric else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    out = [line(head), "  ".join("-" * w for w in widths), *(line(b) for b in body)]
    notes = [f"  {r['id']}: {r['notes']}" for r in rows if r.get("notes")]
    return "\n".join(out + ["", "notes:", *notes])


def markdown(rows: list[dict[str, Any]]) -> str:
    """The README table: every row with a target or a projection, and the MAML breakdown."""
    lines = ["| row | rate | ratio (reference) | target | status | peak MB |", "|---|---|---|---|---|---|"]
    for r in rows:
        if not (r["target"] or r["kind"] in ("breakdown", "paper", "peer")) or r["status"] == "SKIP":
            continue
        rate = (
            f"{r['rate']:,.0f} {r['unit']}"
            if r["rate"] != ""
            else (f"{r['seconds']} {r['unit']}" if r["seconds"] != "" else "")
        )
        if r["projected_h"] != "":
            rate += f"; projected {r['projected_h']} h"
        ref = r["reference"].split(" (")[0] if r["kind"] != "breakdown" else "share of the iteration"
        ratio = f"{r['ratio']}x ({ref})" if r["ratio"] != "" else ref
        lines.append(f"| {r['id']} | {rate} | {ratio} | {r['target']} | {r['status']} | {r['peak_rss_mb']} |")
    return "\n".join(lines)
