"""SPIKE: one markdown row per finished run in spikes/epr/out/*.json.

    python spikes/epr/summarize.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"


def main() -> int:
    rows = []
    for path in sorted(OUT.glob("*.json")):
        r = json.loads(path.read_text())
        a = r["args"]
        rows.append((r["payload_bytes"], (
            f"| {r['tag']} | {a['prior']} | {'tensor' if a['per_tensor'] else 'channel'} | {a['lam']} | {a['bits']}+{a['bias_bits']} | {a['epochs']} | "
            f"{a['seed']} | {r['payload_bytes']:,} | {r['bits_per_param']:.3f} | {r['ideal_bytes']:,.0f} | "
            f"{r.get('prior_code_bytes', float('nan')):,.0f} | {100 * r['val_error']:.2f} | {100 * r['test_error']:.2f} | "
            f"{r['median_step_ms']:.1f} | {r['total_wall_s']:.0f} |")))
    print("| run | prior | scale | lam | init bits (+bias) | epochs | seed | payload B | bits/param | n*H/8 B | under learned prior B | val % | test % | step ms | wall s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for _, line in sorted(rows, key=lambda t: t[1].split("|")[2] + f"{t[0]:09d}"):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
