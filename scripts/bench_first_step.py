"""Time from submitting a train job over HTTP to its first optimiser step, on a real `cvops serve`.

    python scripts/bench_first_step.py [--preset tiny_cnn] [--runs 3]

Starts a server on a temporary data dir, builds the preset, uploads a drawn-shapes dataset, then
submits ``--runs`` one-epoch train jobs one after the other and prints, per job, submission → start
(scheduler + worker actor), start → first step (model and dataset loading), and the total.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.e2e.helpers import preset, shapes_zip, upload_dataset, wait_job  # noqa: E402
from tests.e2e.server import Server, request  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny_cnn")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(Path(tmp) / "data").start()
        try:
            token = server.token()
            status, model = preset(server.url, token, args.preset, num_classes=3)
            assert status == 200, model
            status, ds = upload_dataset(
                server.url, token, shapes_zip(Path(tmp), n_per_class=20), task="classification"
            )
            assert status == 200, ds
            print(f"{'run':>4} {'submit->start s':>16} {'start->1st step s':>18} {'submit->1st step s':>19}")
            for i in range(args.runs):
                status, job = request(
                    server.url,
                    "POST",
                    "/api/v1/jobs",
                    {
                        "kind": "train",
                        "model_id": model["id"],
                        "dataset_id": ds["id"],
                        "hyperparameters": {"epochs": 1, "batch_size": 16},
                    },
                    token,
                )
                assert status == 202, job
                done = wait_job(server.url, token, job["id"], timeout=600)
                assert done["status"] == "succeeded", done
                sub, start, first = (
                    done["submitted_ts"],
                    done["started_ts"],
                    done["result"]["first_step_unix"],
                )
                print(f"{i + 1:>4} {start - sub:>16.3f} {first - start:>18.3f} {first - sub:>19.3f}")
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
