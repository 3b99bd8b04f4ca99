"""Benchmark: a 10 MB and a 100 MB model updated on loopback, phase by phase, and agent RSS.

Usage: .venv/bin/python bench/update.py [--sizes 10,100] [--link-mbps 100]

Sets up what the end-to-end tests use (tests/integration/agent_fleet.py): the real
OTA server on loopback, emulated devices on swtpm provisioned with
``edgeseal-agent provision``, releases signed 2 of 3. Two devices update side
by side from the same server in the same run:

* ``loopback`` fetches straight from the server (the download runs at memory
  speed: the overhead's share is as large as it can ever be);
* ``link`` fetches through ``bench/link.py``, a loopback proxy that limits the
  server-to-device direction to ``--link-mbps`` (default 100 Mbit/s, a generous
  device uplink: Jetson and Raspberry Pi fleets update over Wi-Fi, LTE or shared
  Ethernet).

Each agent runs as ``edgeseal-agent run`` in a subprocess, first serving a tiny
model; its idle RSS is read from /proc/PID/status (VmRSS). One update check with
nothing to install then runs in each daemon: the agent imports its TUF stack at
its first cycle (deferred so that an idle agent stays small), and that one-time
cost is printed on its own line rather than charged to the first size measured.
Then for each size a release built with ``modelgen.padded_model`` is published
and ``edgeseal-agent check-now`` makes each running agent update; the per-phase
seconds come from its UpdateResult and the peak RSS is VmHWM after the update.

What is measured, per update (seconds from ``UpdateResult.phases``, timed by the agent):

* ``refresh``  - a fresh TUF ``Updater``: root/timestamp/snapshot/targets and the
  family's delegated role, fetched and verified;
* ``download`` - the sealed model and the device's envelope, fetched and checked
  against their TUF length and hashes;
* ``unwrap``   - the content key opened from the HPKE envelope in the TPM;
* ``decrypt``  - the trial's load of the slot: key unsealed by the TPM, model
  authenticated, decrypted and its plaintext digest checked (the one decryption);
* ``health_check`` - the TFLite model loaded and run on the release's golden inputs;
* ``commit``   - the install transaction minus the trial: mark-bad, write (the
  verified download renamed into the slot, fsyncs, key re-sealed in the TPM),
  verify-written, switch, mark-good, NV floor.

``total`` is their sum (the update check's own bookkeeping outside the phases is
not counted); ``overhead`` = refresh + unwrap + decrypt + commit, shown in seconds
and as a share of ``total``. For the loopback rows, ``break-even`` is the link
rate below which that overhead is under 20 % of the update
(download time = size / rate; overhead and health check as measured).

Targets: idle RSS < 80 MB; overhead < 20 % of the update's total time, judged on
the device link (the loopback share is printed next to it: with a TPM round
trip and fsynced commit costing tens of milliseconds, no agent meets 20 % of a
60 ms download; ADR 0005).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))

from agent_fleet import AgentDevice, fleet

from link import link_proxy

PHASES = ("refresh", "download", "unwrap", "decrypt", "health_check", "commit")
OVERHEAD = ("refresh", "unwrap", "decrypt", "commit")
IDLE_RSS_TARGET_MB = 80.0
OVERHEAD_TARGET = 0.20


def rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of ``pid`` in MB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


def check(dev: AgentDevice, outcome: str) -> dict[str, float]:
    result = dev.check_now()
    if result["outcome"] != outcome:
        raise SystemExit(f"{dev.name}: expected {outcome}, got {result}")
    phases: dict[str, float] = result["phases"]
    return phases


def main() -> int:
    os.environ.setdefault("TSS2_LOG", "all+none")  # tpm2-tss prints handle probes otherwise
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100", help="model sizes in MB")
    parser.add_argument(
        "--link-mbps", type=float, default=100.0, help="the device link's rate in Mbit/s"
    )
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    from edgeseal.hardware.localca import ensure_local_ca

    rows = []
    first_refresh: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory(prefix="edgeseal-bench-") as tmp_name:
        tmp = Path(tmp_name)
        ca = ensure_local_ca(tmp / "swtpm-ca").ca_dir
        with (
            fleet(tmp, max_upload=(max(sizes) + 16) * 1024 * 1024) as f,
            link_proxy(f.server.host_port[1], args.link_mbps) as link,
        ):
            devices = {
                "loopback": f.add_device("bench-loopback", ca),
                "link": f.add_device("bench-link", ca, server_url=link.base_url),
            }
            try:
                f.publish(1)
                for dev in devices.values():
                    check(dev, "installed")
                with contextlib.ExitStack() as daemons:
                    procs = {name: daemons.enter_context(d.daemon()) for name, d in devices.items()}
                    idle, _ = rss_mb(procs["loopback"].pid)
                    for name, dev in devices.items():
                        first = check(dev, "no-update")["refresh"]
                        first_refresh[name] = (first, check(dev, "no-update")["refresh"])
                    for n, size in enumerate(sizes, start=2):
                        f.publish(n, size=size * 1024 * 1024)
                        for name, dev in devices.items():
                            phases = check(dev, "installed")
                            after, peak = rss_mb(procs[name].pid)
                            rows.append((name, size, phases, after, peak))
            finally:
                for dev in devices.values():
                    dev.device.stop()
    report(idle, first_refresh, rows, args.link_mbps)
    return 0


def report(
    idle: float,
    first_refresh: dict[str, tuple[float, float]],
    rows: list[tuple[str, int, dict[str, float], float, float]],
    link_mbps: float,
) -> None:
    print(f"agent idle RSS (serving a tiny model, before any update cycle): {idle:.1f} MB")
    for name, (first, later) in first_refresh.items():
        print(
            f"{name}: first update check's refresh {first:.3f} s (imports the TUF stack, "
            f"once per agent process), the next one's {later:.3f} s"
        )
    header = " ".join(f"{p:>13s}" for p in PHASES)
    print(
        f"{'device':>8s} {'size':>6s} {header} {'total':>8s} {'overhead':>9s} {'share':>6s}"
        f" {'break-even':>11s} {'RSS':>8s} {'peak':>8s}"
    )
    verdicts = [f"idle RSS {'MET' if idle < IDLE_RSS_TARGET_MB else 'MISSED'}"]
    for name, size, phases, after, peak in rows:
        total = sum(phases.values())
        overhead = sum(phases[p] for p in OVERHEAD)
        share = overhead / total
        if name == "link":
            verdicts.append(
                f"{size} MB overhead at {link_mbps:g} Mbit/s "
                f"{'MET' if share < OVERHEAD_TARGET else 'MISSED'}"
            )
            even = "-"
        else:
            spare = overhead / OVERHEAD_TARGET - overhead - phases["health_check"]
            even = f"{size * 1024 * 1024 * 8 / spare / 1e6:.0f} Mbit/s" if spare > 0 else "none"
        cells = " ".join(f"{phases[p]:12.3f}s" for p in PHASES)
        print(
            f"{name:>8s} {size:>4d}MB {cells} {total:7.3f}s {overhead:8.3f}s {share:6.1%}"
            f" {even:>11s} {after:6.1f}MB {peak:6.1f}MB"
        )
    print(
        f"overhead = {' + '.join(OVERHEAD)}; share = overhead / total; break-even = the "
        f"link rate below which the loopback row's overhead is under {OVERHEAD_TARGET:.0%}."
    )
    print(
        f"targets: idle RSS < {IDLE_RSS_TARGET_MB:.0f} MB; overhead share "
        f"< {OVERHEAD_TARGET:.0%} of the total on a {link_mbps:g} Mbit/s device link: "
        f"{', '.join(verdicts)}"
    )


if __name__ == "__main__":
    sys.exit(main())
