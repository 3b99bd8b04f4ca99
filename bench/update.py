"""Benchmark: a 10 MB and a 100 MB model updated on loopback, phase by phase, and agent RSS.

Usage: .venv/bin/python bench/update.py [--sizes 10,100]

Sets up what the end-to-end tests use (tests/integration/agent_fleet.py): the real
OTA server on loopback, an emulated device on swtpm provisioned with
``edgeseal-agent provision``, releases signed 2 of 3. The agent runs as
``edgeseal-agent run`` in a subprocess, first serving a tiny model; its idle RSS
is read from /proc/PID/status (VmRSS). Then for each size a release built with
``modelgen.padded_model`` is published and ``edgeseal-agent check-now`` makes
the running agent update; the per-phase seconds come from its UpdateResult and
the peak RSS is VmHWM after the update.

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
and as a share of ``total``. RSS is VmRSS of the agent process: idle = serving the
tiny first model before any update cycle ran in it; after/peak = VmRSS/VmHWM once
that update was served.

On loopback the download runs at memory speed, so the overhead's share is far
larger than on a real uplink (the share is pessimistic; the absolute overhead is
what a device pays on top of its download).

Targets: idle RSS < 80 MB; overhead < 20 % of the update's total time.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))

from agent_fleet import AgentDevice, fleet

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


def main() -> int:
    os.environ.setdefault("TSS2_LOG", "all+none")  # tpm2-tss prints handle probes otherwise
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100", help="model sizes in MB")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    from edgeseal.hardware.localca import ensure_local_ca

    rows = []
    with tempfile.TemporaryDirectory(prefix="edgeseal-bench-") as tmp_name:
        tmp = Path(tmp_name)
        ca = ensure_local_ca(tmp / "swtpm-ca").ca_dir
        with fleet(tmp, max_upload=(max(sizes) + 16) * 1024 * 1024) as f:
            dev: AgentDevice = f.add_device("bench-1", ca)
            try:
                f.publish(1)
                assert dev.check_now()["outcome"] == "installed"
                with dev.daemon() as proc:
                    idle, _ = rss_mb(proc.pid)
                    for n, size in enumerate(sizes, start=2):
                        f.publish(n, size=size * 1024 * 1024)
                        result = dev.check_now()
                        if result["outcome"] != "installed":
                            raise SystemExit(f"update of {size} MB: {result}")
                        after, peak = rss_mb(proc.pid)
                        rows.append((size, result["phases"], after, peak))
            finally:
                dev.device.stop()
    print(f"agent idle RSS (serving a tiny model, before any update cycle): {idle:.1f} MB")
    header = " ".join(f"{p:>13s}" for p in PHASES)
    print(
        f"{'size':>6s} {header} {'total':>8s} {'overhead':>9s} {'share':>6s}"
        f" {'RSS':>8s} {'peak':>8s}"
    )
    verdicts = [f"idle RSS {'MET' if idle < IDLE_RSS_TARGET_MB else 'MISSED'}"]
    for size, phases, after, peak in rows:
        total = sum(phases.values())
        overhead = sum(phases[p] for p in OVERHEAD)
        share = overhead / total
        verdicts.append(f"{size} MB overhead {'MET' if share < OVERHEAD_TARGET else 'MISSED'}")
        cells = " ".join(f"{phases[p]:12.3f}s" for p in PHASES)
        print(
            f"{size:>4d}MB {cells} {total:7.3f}s {overhead:8.3f}s {share:6.1%}"
            f" {after:6.1f}MB {peak:6.1f}MB"
        )
    print(
        f"overhead = {' + '.join(OVERHEAD)}; share = overhead / total. Loopback makes the "
        "download unrealistically fast, so the share is pessimistic."
    )
    print(
        f"targets: idle RSS < {IDLE_RSS_TARGET_MB:.0f} MB; overhead share "
        f"< {OVERHEAD_TARGET:.0%} of the total: {', '.join(verdicts)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
