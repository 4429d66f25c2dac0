"""Print the Markdown tables of benchmarks/README.md from a `tjdnet bench-heads` JSON file.

python benchmarks/heads_table.py benchmarks/results/heads_v49152_n64.json
"""

from __future__ import annotations

import json
import sys


def main() -> None:
    payload = json.loads(open(sys.argv[1]).read())
    print("| head | R | H | parameters | % of 135M backbone | peak loss memory (MiB) | fwd+bwd (s) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for c in payload["configs"]:
        print(
            f"| {c['head']} | {c['rank']} | {c['horizon']} | {c['parameters']:,} | "
            f"{100 * c['fraction_of_backbone']:.2f} | {c['peak_loss_memory_mib']:.0f} | {c['time_s']['median']:.1f} |"
        )
    if payload["chunking"]:
        print()
        print("| head | R | H | logits if materialised (MiB) | peak, chunked (MiB) | peak, unchunked (MiB) |")
        print("|---|---:|---:|---:|---:|---:|")
        for c in payload["chunking"]:
            print(
                f"| {c['head']} | {c['rank']} | {c['horizon']} | {c['logits_mib_if_materialised']:.0f} | "
                f"{c['chunked_mib']:.0f} | {c['unchunked_mib']:.0f} |"
            )


if __name__ == "__main__":
    main()
